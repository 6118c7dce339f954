"""Chapter parameters: every value checked against its rule before any kernel starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_runner import write_notebook

from residual_core.runner import chapters, params, presets
from residual_core.runner import sweep as sw


def chapter(number: str) -> Path:
    return chapters.find_chapter(number)


def refused(number: str, overrides: dict) -> str:
    with pytest.raises(chapters.ParameterError) as info:
        chapters.check_overrides(chapter(number), overrides)
    return str(info.value)


def test_every_book_parameter_has_a_rule():
    """A parameter defaulting to None says nothing of its type: it must be declared."""
    for source in chapters.list_chapters():
        for name, default in chapters.read_parameters(source).items():
            rule = params.rule_for(source.stem, name, default)
            assert rule is not None, f"{source.stem}: parameter {name!r} has no rule"
            if default is None:
                assert name in params.RULES or name in params.CHAPTER_RULES.get(source.stem, {})
                assert rule.none is not None, f"{source.stem}: {name}=None must be accepted"


def test_chapter_defaults_presets_and_sweep_grids_pass():
    for source in chapters.list_chapters():
        chapters.check_overrides(source, {})
        for overrides in presets.RUNS.get(source.stem, {}).values():
            chapters.check_overrides(source, overrides)  # raises naming the preset's value
        for run, axes in presets.SWEEPS.get(source.stem, {}).items():
            base = presets.preset(source, run)
            assert sw.expand(source, base, axes, run), f"{source.stem} {run}: empty grid"


@pytest.mark.parametrize(("number", "overrides", "says"), [
    # the probes of issue #14: each was accepted and failed later, or ran wrong
    ("03", {"tasks": []}, "tasks=[]: expects a non-empty list"),
    ("05", {"tasks": []}, "tasks=[]: expects a non-empty list"),
    ("00", {"n_images": 1.5}, "n_images=1.5: expects an int ≥ 1; got the float 1.5"),
    ("00", {"n_images": True}, "n_images=True: expects an int ≥ 1; got the bool True"),
    ("00", {"model": [1, 2]}, "model=[1, 2]: expects a model key; got the list [1, 2]"),
    ("05", {"model": "openclip"}, "is not a model key (did you mean 'openclip_l'?)"),
    ("00", {"images_from": "imagenett"}, "is not a dataset or 'noise' (did you mean 'imagenet'?)"),
    ("05", {"tasks": ["cifar11"]}, "item 0 ('cifar11') is not a dataset"),
    ("05", {"train_size": -5}, "train_size=-5: expects an int ≥ 1, or None"),
    ("01", {"linear_threshold": 0}, "linear_threshold=0: expects a number > 0 and ≤ 1"),
    ("05", {"evr": float("nan")}, "evr=nan: expects a number > 0 and ≤ 1"),
    ("00", {"device": "gpu"}, "device='gpu': expects a device ('cpu', 'cuda', 'cuda:N'"),
    ("05", {"lrs": {"residual": 0.1}}, "key 'residual' is not a variant (did you mean"),
    ("05", {"lambda_variant": "ResiDual"}, "lambda_variant='ResiDual': is not a variant"),
    ("02", {"control": "randm"}, "is not a key of the datasets parameter (did you mean 'random'"),
    ("02", {"same": ["wrld"]}, "item 0 ('wrld') is not a key of the datasets parameter (did "
                               "you mean 'world'"),
    ("03", {"centering": "mean"}, "centering='mean': is not a centring"),
    ("03", {"span": 3}, "span=3: expects a TextSpan span; got the int 3"),
])
def test_bad_values_are_refused_naming_parameter_value_and_choices(number, overrides, says):
    assert says in refused(number, overrides)


def test_every_bad_value_is_listed_at_once():
    text = refused("05", {"train_size": 0, "model": "x", "patience": 2.5})
    assert text.count("\n  ") == 3 and "05_residual.py: parameter value(s) refused" in text


def test_random_weights_accept_any_open_clip_architecture():
    full = chapters.check_overrides(chapter("05"), {"model": "ViT-B-32", "weights": "random"})
    assert full["model"] == "ViT-B-32"
    assert "with weights='random', any open_clip model name" in refused(
        "05", {"model": "ViT-B-32"})


def test_a_chapter_outside_the_book_is_checked_against_its_defaults(tmp_path: Path):
    nb = write_notebook(tmp_path / "01_other.py",
                        '# %% tags=["parameters"]\nn = 2\nrate = 0.5\nname = "a"\nitems = [1]\n'
                        'opt = None',
                        "# %%\nprint(n)")
    full = chapters.check_overrides(nb, {"rate": 1, "name": "b", "items": [], "opt": {"x": 1}})
    assert full["rate"] == 1, "an int where a float is expected"
    for bad, says in [({"n": 1.5}, "n=1.5: expects an int; got the float 1.5"),
                      ({"n": None}, "n=None: expects an int; got None"),
                      ({"rate": "fast"}, "rate='fast': expects a number; got the str"),
                      ({"name": ["a"]}, "name=['a']: expects a string; got the list"),
                      ({"items": "x"}, "items='x': expects a list; got the str")]:
        with pytest.raises(chapters.ParameterError) as info:
            chapters.check_overrides(nb, bad)
        assert says in str(info.value)
