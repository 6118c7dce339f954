"""What each chapter parameter accepts: type, range, registry; checked before a kernel starts.

A parameter's :class:`Rule` is declared in :data:`RULES` when the book's chapters share it
(the same name means the same thing in every chapter: ``model`` is a key of the model table,
``train_size`` an image count or ``None`` for the whole split, ``device`` a device string),
with :data:`CHAPTER_RULES` for the few names one chapter uses differently. A parameter without
a declared rule (a chapter outside the book, e.g. a test's) gets one from its default literal:
an int default takes ints, a float default numbers, a bool default bools, a string default
strings, a list default lists, a dict default dicts. ``tests/test_params.py`` checks that every
parameter of every book chapter defaulting to ``None`` has a declared rule (its type cannot be
read off ``None``) and that every preset and sweep grid passes.

:func:`problems` lists everything wrong with a full parameter set, one line per parameter,
naming the value and what is valid (with a "did you mean" against registries); the runner
raises them as one :class:`~residual_core.runner.chapters.ParameterError` for ``run``, ``sweep``
(every pair), ``book`` and their dry runs alike.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from residual_core.core.checks import DEVICE_FORMS, check_device_form
from residual_core.core.errors import InputError

__all__ = ["CHAPTER_RULES", "RULES", "Rule", "problems", "rule_for"]

Names = Callable[[Mapping[str, Any]], Sequence[str]]
"""Valid names given the full parameter set (a registry, or another parameter's values)."""


@dataclass(frozen=True)
class Rule:
    """What one parameter accepts.

    Attributes:
        kind: ``"int"``, ``"float"`` (ints accepted), ``"bool"``, ``"str"``, ``"list"`` (or a
            tuple), ``"dict"``, or ``"device"`` (a device string).
        minimum: Smallest number accepted (``None``: no bound).
        maximum: Largest number accepted (``None``: no bound).
        open_minimum: ``minimum`` itself is refused (e.g. a fraction in ``(0, 1]``).
        none: What ``None`` means, where it is accepted (``None``: refused).
        names: Valid strings, read when checked (registries load only then).
        what: What a valid string is, for the message (``"a model key"``).
        hint: Added to the list of valid names (e.g. other accepted forms).
        item: Rule of each item of a list, or of each value of a dict.
        keys: Rule of each key of a dict.
        nonempty: A list or dict must hold at least one item.
    """

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    none: str | None = None
    names: Names | None = None
    what: str = ""
    hint: str = ""
    item: Rule | None = None
    keys: Rule | None = None
    nonempty: bool = False

    def describe(self) -> str:
        """What the rule accepts, in words."""
        kinds = {"int": "an int", "float": "a number", "bool": "True or False",
                 "str": self.what or "a string", "device": f"a device ({DEVICE_FORMS})",
                 "list": "a non-empty list" if self.nonempty else "a list",
                 "dict": "a non-empty dict" if self.nonempty else "a dict"}
        text = kinds[self.kind]
        if self.kind in ("int", "float"):
            low = "" if self.minimum is None else \
                f"{'>' if self.open_minimum else '≥'} {self.minimum:g}"
            high = "" if self.maximum is None else f"≤ {self.maximum:g}"
            bounds = " and ".join(b for b in (low, high) if b)
            text += f" {bounds}" if bounds else ""
        if self.kind == "list" and self.item is not None:
            text += f" whose items are each {self.item.describe()}"
        if self.kind == "dict" and self.item is not None:
            text += f" whose values are each {self.item.describe()}"
        if self.none is not None:
            text += f", or None ({self.none})"
        return text

    def problem(self, value: Any, full: Mapping[str, Any]) -> str | None:
        """What is wrong with ``value`` (``None`` if nothing); ``full`` is the whole set."""
        if value is None:
            return None if self.none is not None else f"expects {self.describe()}; got None"
        wrong = f"expects {self.describe()}; got {_show(value)}"
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                return wrong
            return None if self._in_range(value) else wrong
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value):
                return wrong
            return None if self._in_range(value) else wrong
        if self.kind == "bool":
            return None if isinstance(value, bool) else wrong
        if self.kind == "device":
            try:
                check_device_form(value)
            except InputError:
                return wrong
            return None
        if self.kind == "str":
            if not isinstance(value, str):
                return wrong
            return self._name_problem(value, full)
        if self.kind == "list":
            if not isinstance(value, list | tuple) or (self.nonempty and not value):
                return wrong
            for i, item in enumerate(value):
                if self.item is not None and (bad := self.item.problem(item, full)):
                    return f"item {i} ({item!r}) {bad}"
            return None
        if self.kind == "dict":
            if not isinstance(value, dict) or (self.nonempty and not value):
                return wrong
            for key, item in value.items():
                if self.keys is not None and (bad := self.keys.problem(key, full)):
                    return f"key {key!r} {bad}"
                if self.item is not None and (bad := self.item.problem(item, full)):
                    return f"value of {key!r} ({item!r}) {bad}"
            return None
        raise ValueError(f"unknown rule kind {self.kind!r}")

    def _in_range(self, value: float) -> bool:
        if self.minimum is not None and (value < self.minimum or
                                         (self.open_minimum and value == self.minimum)):
            return False
        return self.maximum is None or value <= self.maximum

    def _name_problem(self, value: str, full: Mapping[str, Any]) -> str | None:
        if self.names is None:
            return None
        valid = list(self.names(full))
        if value in valid:
            return None
        close = difflib.get_close_matches(value, valid, n=1)
        shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40
                                         else "")
        mean = f" (did you mean {close[0]!r}?)" if close else ""
        hint = f"; {self.hint}" if self.hint else ""
        return f"is not {self.what or 'a valid name'}{mean}; valid: {shown}{hint}"


def _show(value: Any) -> str:
    return f"the {type(value).__name__} {value!r}"


def _int(minimum: int | None = 1, none: str | None = None) -> Rule:
    return Rule("int", minimum=minimum, none=none)


def _fraction(none: str | None = None) -> Rule:
    return Rule("float", minimum=0.0, maximum=1.0, open_minimum=True, none=none)


# ----- registries, read when a value is checked --------------------------------------------


def _models(full: Mapping[str, Any]) -> list[str]:
    from residual_core.models.specs import list_models

    names = list_models()
    if full.get("weights") == "random":  # any open_clip architecture builds with random weights
        import open_clip

        names += open_clip.list_models()
    return names


def _datasets(full: Mapping[str, Any]) -> list[str]:
    from residual_core.data.registry import list_datasets

    return list_datasets()


def _images(full: Mapping[str, Any]) -> list[str]:
    return [*_datasets(full), "noise"]


def _variants(full: Mapping[str, Any]) -> list[str]:
    from residual_core.core.residual import VARIANTS

    return list(VARIANTS)


def _splits(full: Mapping[str, Any]) -> list[str]:
    from residual_core.data.base import SPLITS

    return list(SPLITS)


def _fixed(*values: str) -> Names:
    return lambda full: list(values)


def _centerings(full: Mapping[str, Any]) -> list[str]:
    from residual_core.core.decompose import CENTERINGS

    return list(CENTERINGS)


def _spans(full: Mapping[str, Any]) -> list[str]:
    from residual_core.core.textspan import SPANS

    return list(SPANS)


def _ablation_means(full: Mapping[str, Any]) -> list[str]:
    from residual_core.analysis.alignment import ABLATION_MEANS

    return list(ABLATION_MEANS)


def _dictionaries(full: Mapping[str, Any]) -> list[str]:
    from residual_core.data.dictionaries import DICTIONARIES

    return list(DICTIONARIES)


def _dataset_keys(full: Mapping[str, Any]) -> list[str]:
    datasets = full.get("datasets")
    return list(datasets) if isinstance(datasets, dict) else []


MODEL = Rule("str", names=_models, what="a model key",
             hint="or, with weights='random', any open_clip model name")
DATASET = Rule("str", names=_datasets, what="a dataset of residual_core.data.list_datasets()")
VARIANT = Rule("str", names=_variants, what="a variant")
SPLIT = Rule("str", names=_splits, what="a split")
IMAGES = _int(1, "the dataset's default for the split")
DATASET_KEY = Rule("str", names=_dataset_keys, what="a key of the datasets parameter")
TEXT = Rule("str")

RULES: dict[str, Rule] = {
    # what is run, and where
    "model": MODEL,
    "weights": Rule("str", names=_fixed("pretrained", "random"), what="a weights choice"),
    "device": Rule("device"),
    "centering": Rule("str", names=_centerings, what="a centring"),
    "seed": _int(0),
    "threads": _int(1, "torch's default"),
    "num_workers": _int(0),
    "batch_size": _int(1),
    "results_file": Rule("str", none="no table is written; the runner sets it"),
    "results_dir": Rule("str", none="<cache>/residual"),
    # data
    "images_from": Rule("str", names=_images, what="a dataset or 'noise'"),
    "reference": DATASET,
    "tasks": Rule("list", item=DATASET, nonempty=True),
    "default_task": TEXT,
    "task_families": Rule("dict", keys=TEXT, item=TEXT),
    "datasets": Rule("dict", keys=TEXT, item=DATASET, nonempty=True),
    "control": DATASET_KEY,
    "same": Rule("list", item=DATASET_KEY),
    "split": SPLIT,
    "reference_split": SPLIT,
    "size": IMAGES,
    "n_images": _int(1),
    "compare_images": _int(0),
    "train_size": IMAGES,
    "val_size": IMAGES,
    "test_size": IMAGES,
    "reference_size": IMAGES,
    "finetune_train_size": IMAGES,
    # analyses
    "dictionary": Rule("str", names=_dictionaries, what="a dictionary"),
    "modifier_families": Rule("list", item=TEXT),
    "linear_threshold": _fraction(),
    "threshold": _fraction(),
    "evr": _fraction(),
    "twonn_points": _int(3),  # TwoNN needs two neighbours per point
    "weighted": Rule("bool"),
    "n_texts": _int(1),
    "rank": _int(1),
    "span": Rule("str", names=_spans, what="a TextSpan span"),
    "last_layers": _int(1),
    "n_best_heads": _int(1),
    "random_seeds": _int(1),
    "k_carriers": _int(1),
    "ablation_mean": Rule("str", names=_ablation_means, what="a layer-ablation mean"),
    # ResiDual
    "variants": Rule("list", item=VARIANT, nonempty=True),
    "authors_settings": Rule("list", item=VARIANT),
    "lrs": Rule("dict", keys=VARIANT, item=Rule("float", minimum=0.0, open_minimum=True)),
    "max_epochs": _int(1),
    "patience": _int(1),
    "finetune_epochs": _int(1),
    "preload_images": Rule("bool"),
    "stream_units": Rule("bool"),
    "probe_headroom": Rule("bool"),
    "lambda_variant": VARIANT,
    "n_lambda_units": _int(1),
}
"""Rules of the book's chapter parameters, by name (a name means the same in every chapter)."""

CHAPTER_RULES: dict[str, dict[str, Rule]] = {}
"""Per chapter, rules that differ from :data:`RULES`: where a chapter gives a shared name its own
meaning (none does today; a new chapter declares it here rather than renaming)."""


def _from_default(default: Any) -> Rule | None:
    """The rule a literal default implies (``None`` for a ``None`` default: no type known)."""
    if isinstance(default, bool):
        return Rule("bool")
    if isinstance(default, int):
        return Rule("int")
    if isinstance(default, float):
        return Rule("float")
    if isinstance(default, str):
        return Rule("str")
    if isinstance(default, list | tuple):
        return Rule("list")
    if isinstance(default, dict):
        return Rule("dict")
    return None


def rule_for(stem: str, name: str, default: Any, book: bool = True) -> Rule | None:
    """The rule of one parameter: declared for the book's chapters, else read off its default.

    Args:
        stem: The chapter's name (``05_residual``).
        name: The parameter.
        default: Its default in the parameters cell.
        book: Whether the chapter is one of the book's (the declared rules apply).

    Returns:
        The rule, or ``None`` when neither a declaration nor the default says (any value).
    """
    if book:
        declared = CHAPTER_RULES.get(stem, {}).get(name) or RULES.get(name)
        if declared is not None:
            return declared
    return _from_default(default)


def problems(stem: str, defaults: Mapping[str, Any], full: Mapping[str, Any],
             book: bool = True) -> list[str]:
    """Everything wrong with a chapter's full parameter set, one line per parameter.

    Args:
        stem: The chapter's name.
        defaults: Its parameters cell (name → default).
        full: The defaults updated by the overrides.
        book: Whether the declared rules apply (the book's chapters).

    Returns:
        ``"name=value: what is wrong"`` lines; empty when every value is valid.
    """
    out = []
    for name, value in full.items():
        rule = rule_for(stem, name, defaults.get(name), book)
        if rule is None:
            continue
        bad = rule.problem(value, full)
        if bad:
            out.append(f"{name}={value!r}: {bad}")
    return out
