"""Units, the library's currency: their labels, the model's layout and the labelled stack.

A ViT's CLS stream is written by its units, in a fixed order with fixed labels: ``embed``, then
``L{l}.mlp`` for every layer, then ``L{l}H{h}`` for every head. This module is the one owner of
those labels (:func:`unit_labels`, :func:`parse_label`), of a model's :class:`UnitLayout` and of
:class:`Units`, the labelled ``(batch, unit, d)`` stack that :func:`~residual_core.core.decompose.
decompose` returns, the encoding store reads and every per-unit tool accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "UnitLabel",
    "UnitLayout",
    "Units",
    "is_head",
    "label_table",
    "layer_of",
    "parse_label",
    "unit_grid",
    "unit_labels",
]

Kind = Literal["embed", "mlp", "head"]
_LABEL = re.compile(r"^(?:embed|L(?P<layer>\d+)(?:\.(?P<mlp>mlp)|H(?P<head>\d+)))$")
_FORMS = "'embed', 'L{l}.mlp' or 'L{l}H{h}'"


@dataclass(frozen=True)
class UnitLabel:
    """A parsed unit label.

    Attributes:
        label: The label itself.
        kind: ``"embed"``, ``"mlp"`` or ``"head"``.
        layer: The layer (``None`` for the embedding).
        head: The head within its layer (``None`` unless a head).
    """

    label: str
    kind: Kind
    layer: int | None
    head: int | None


def parse_label(label: str) -> UnitLabel:
    """Parse a unit label (``embed``, ``L{l}.mlp`` or ``L{l}H{h}``).

    Raises:
        ValueError: Naming the label and the valid forms.
    """
    match = _LABEL.match(label) if isinstance(label, str) else None
    if match is None:
        raise ValueError(f"unexpected unit label {label!r}; a unit label is {_FORMS}")
    if label == "embed":
        return UnitLabel(label, "embed", None, None)
    layer = int(match["layer"])
    if match["mlp"]:
        return UnitLabel(label, "mlp", layer, None)
    return UnitLabel(label, "head", layer, int(match["head"]))


def is_head(label: object) -> bool:
    """Whether a label names an attention head (``L{l}H{h}``); ``False`` for any other string."""
    match = _LABEL.match(label) if isinstance(label, str) else None
    return bool(match and match["head"] is not None)


def layer_of(label: str) -> int | None:
    """Layer of a unit label (``L3H1`` → 3, ``L2.mlp`` → 2, ``embed`` → ``None``)."""
    return parse_label(label).layer


def unit_labels(n_layers: int, n_heads: int) -> list[str]:
    """Labels of the units in their fixed order: ``embed``, ``L{l}.mlp`` ..., ``L{l}H{h}`` ...

    Args:
        n_layers: Number of transformer blocks.
        n_heads: Attention heads per block.

    Returns:
        ``1 + n_layers + n_layers * n_heads`` labels.
    """
    mlps = [f"L{layer}.mlp" for layer in range(n_layers)]
    heads = [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]
    return ["embed", *mlps, *heads]


def label_table(labels: Sequence[str]) -> pd.DataFrame:
    """Unit labels parsed into a table, one row per label in order.

    Returns:
        Columns ``unit``, ``kind`` (``embed``/``mlp``/``head``), ``layer`` (-1 for the
        embedding) and ``head`` (-1 unless a head).

    Raises:
        ValueError: For a label that is not a unit label.
    """
    import pandas as pd

    rows = []
    for label in labels:
        p = parse_label(label)
        rows.append((label, p.kind, -1 if p.layer is None else p.layer,
                     -1 if p.head is None else p.head))
    return pd.DataFrame(rows, columns=["unit", "kind", "layer", "head"])


def unit_grid(values: Mapping[str, float] | pd.Series, layout: UnitLayout | None = None
              ) -> pd.DataFrame:
    """One value per unit laid out as the layer × head grid, each layer's MLP in a last column.

    Args:
        values: Unit label → value (the embedding and labels of no head or MLP are left out).
        layout: The model's layout: every layer and head gets a cell, NaN where no value is
            given. Default: the layers and heads that occur in ``values``.

    Returns:
        Rows ``L0``..``L{n-1}``, columns ``H0``..``H{h-1}``, then ``MLP`` if any MLP has a
        value; float.
    """
    import pandas as pd

    items = [(parse_label(label), float(v)) for label, v in dict(values).items()]
    heads = [(p, v) for p, v in items if p.kind == "head"]
    mlps = [(p, v) for p, v in items if p.kind == "mlp"]
    if layout is not None:
        n_layers, n_heads = layout.n_layers, layout.n_heads
    else:
        n_layers = 1 + max((p.layer for p, _ in heads + mlps), default=-1)
        n_heads = 1 + max((p.head for p, _ in heads), default=-1)
    columns = [f"H{h}" for h in range(n_heads)] + (["MLP"] if mlps else [])
    grid = pd.DataFrame(float("nan"), index=[f"L{layer}" for layer in range(n_layers)],
                        columns=columns)
    for p, v in heads:
        grid.loc[f"L{p.layer}", f"H{p.head}"] = v
    for p, v in mlps:
        grid.loc[f"L{p.layer}", "MLP"] = v
    return grid


@dataclass(frozen=True)
class UnitLayout:
    """Sizes of a ViT's units, read from the model object (never from a table).

    Attributes:
        n_layers: Transformer blocks.
        n_heads: Heads per block.
        d_model: Residual stream width.
        d_head: Width of one head's output (``d_model // n_heads``).
        d_out: Width of the image embedding (after the projection).
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_out: int

    @property
    def labels(self) -> list[str]:
        """Unit labels in the fixed order."""
        return unit_labels(self.n_layers, self.n_heads)

    @property
    def n_units(self) -> int:
        """Number of units: embedding, one MLP per layer and every head."""
        return 1 + self.n_layers + self.n_layers * self.n_heads

    def index(self, label: str) -> int:
        """Position of a unit label in the fixed order.

        Raises:
            KeyError: If ``label`` is not a unit of this model; the message shows valid forms.
        """
        try:
            return self._positions[label]
        except KeyError:
            raise KeyError(
                f"unknown unit label {label!r} for a model with {self.n_layers} layers and "
                f"{self.n_heads} heads; valid labels are 'embed', 'L0.mlp'..'L{self.n_layers - 1}"
                f".mlp' and 'L0H0'..'L{self.n_layers - 1}H{self.n_heads - 1}'"
            ) from None

    def heads(self, layer: int | None = None) -> list[str]:
        """Labels of every head, or of one layer's heads."""
        layers = range(self.n_layers) if layer is None else [self._layer(layer)]
        return [f"L{la}H{h}" for la in layers for h in range(self.n_heads)]

    def mlps(self) -> list[str]:
        """Labels of every MLP."""
        return [f"L{layer}.mlp" for layer in range(self.n_layers)]

    def layer(self, layer: int) -> list[str]:
        """Labels of one layer's units: its heads, then its MLP."""
        return [*self.heads(layer), f"L{self._layer(layer)}.mlp"]

    def _layer(self, layer: int) -> int:
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range for a model with {self.n_layers} "
                             "layers")
        return layer % self.n_layers

    @property
    def _positions(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


@dataclass(frozen=True, eq=False)
class Units:
    """A labelled stack of unit outputs: ``data[:, i]`` is the unit ``labels[i]``.

    What :func:`~residual_core.core.decompose.decompose` returns, the encoding store reads and
    every per-unit tool takes. Units are picked by label, never by position; a selection keeps
    the model's whole :attr:`layout`, so it still knows the model's layers and heads.

    Attributes:
        data: The outputs; ``data.sum(1)`` over every unit is the (unnormalised) embedding.
        labels: Unit labels, in the order of the ``unit`` dimension.
        layout: The model's layout.

    Example:
        >>> units = decompose(model, images)
        >>> units["L3H1"].shape                 # (batch, d_out)
        >>> units.heads(layer=3).labels         # ['L3H0', 'L3H1', ...]
        >>> units.grid().shape                  # (batch, layer, head, d_out)
    """

    data: Float[Tensor, "batch unit d"]
    labels: tuple[str, ...]
    layout: UnitLayout

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.data.ndim != 3 or self.data.shape[1] != len(self.labels):
            raise ValueError(f"data of shape {tuple(self.data.shape)} for {len(self.labels)} "
                             "labels; want (batch, unit, d)")

    @classmethod
    def full(cls, data: Float[Tensor, "batch unit d"], layout: UnitLayout) -> Units:
        """Every unit of a model, in the fixed order of ``layout.labels``."""
        return cls(data, tuple(layout.labels), layout)

    # ----- picking by label ----------------------------------------------------------------
    def index(self, labels: str | Sequence[str]) -> list[int]:
        """Positions of one or more labels along the ``unit`` dimension.

        Raises:
            KeyError: For a label that is not here, naming the labels that are.
        """
        wanted = [labels] if isinstance(labels, str) else list(labels)
        positions = {label: i for i, label in enumerate(self.labels)}
        missing = [label for label in wanted if label not in positions]
        if missing:
            shown = ", ".join(self.labels[:3]) + (f", ..., {self.labels[-1]}"
                                                  if len(self.labels) > 3 else "")
            raise KeyError(f"unknown unit labels {missing}; these {len(self.labels)} units are "
                           f"{shown} (forms: {_FORMS})")
        return [positions[label] for label in wanted]

    def __getitem__(self, key: str | Sequence[str]) -> Float[Tensor, "batch d"] | Units:
        """``units["L3H1"]`` → that unit's ``(batch, d)``; a list of labels → :class:`Units`."""
        if isinstance(key, str):
            return self.data[:, self.index(key)[0]]
        return self.select(key)

    def select(self, labels: str | Sequence[str]) -> Units:
        """The given units, in the order asked."""
        idx = self.index(labels)
        return Units(self.data[:, idx], tuple(self.labels[i] for i in idx), self.layout)

    def heads(self, layer: int | None = None) -> Units:
        """Every head here, or the heads of one layer."""
        wanted = set(self.layout.heads(layer))
        return self.select([u for u in self.labels if u in wanted])

    def mlps(self) -> Units:
        """Every MLP here."""
        return self.select([u for u in self.labels if u.endswith(".mlp")])

    def layer(self, layer: int) -> Units:
        """One layer's units here: its heads, then its MLP."""
        wanted = set(self.layout.layer(layer))
        return self.select([u for u in self.labels if u in wanted])

    def grid(self) -> Float[Tensor, "batch layer head d"]:
        """Every head as a ``(batch, layer, head, d)`` tensor.

        Raises:
            KeyError: If a head of the model is not among these units.
        """
        lay = self.layout
        idx = torch.tensor(self.index(lay.heads()), device=self.data.device)
        return self.data[:, idx].unflatten(1, (lay.n_layers, lay.n_heads))

    # ----- the stack as a whole ------------------------------------------------------------
    def __len__(self) -> int:
        """Number of units (the batch is :attr:`n_samples`)."""
        return len(self.labels)

    def __iter__(self) -> Iterator[str]:
        return iter(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self.labels

    def __repr__(self) -> str:
        return (f"Units({self.n_samples} samples × {len(self)} units × {self.data.shape[-1]}, "
                f"{self.labels[0]!r}..{self.labels[-1]!r}, {self.data.dtype}, "
                f"{self.data.device})")

    @property
    def n_samples(self) -> int:
        """Batch size."""
        return self.data.shape[0]

    @property
    def shape(self) -> torch.Size:
        """``(batch, unit, d)``."""
        return self.data.shape

    def sum(self) -> Float[Tensor, "batch d"]:
        """Sum over the units: over every unit, the reconstructed (unnormalised) embedding."""
        return self.data.sum(1)

    total = sum

    def mean(self) -> Float[Tensor, "unit d"]:
        """Each unit's mean over the batch (e.g. the reference means of mean ablation)."""
        return self.data.mean(0)

    def to(self, *args, **kwargs) -> Units:
        """Move or cast the data, like :meth:`torch.Tensor.to`."""
        return Units(self.data.to(*args, **kwargs), self.labels, self.layout)

    def with_data(self, data: Float[Tensor, "batch unit d"]) -> Units:
        """The same units (labels, layout) over other data, e.g. a transformed copy."""
        return Units(data, self.labels, self.layout)

    def split(self, batch_size: int) -> Iterator[Units]:
        """Consecutive chunks of at most ``batch_size`` samples."""
        for chunk in self.data.split(batch_size):
            yield Units(chunk, self.labels, self.layout)

    @staticmethod
    def cat(parts: Sequence[Units]) -> Units:
        """Concatenate along the batch (every part has the same labels).

        Raises:
            ValueError: With no part, or parts of different units.
        """
        if not parts:
            raise ValueError("Units.cat needs at least one part")
        first = parts[0]
        if any(p.labels != first.labels for p in parts[1:]):
            raise ValueError("Units.cat: the parts hold different units")
        return Units(torch.cat([p.data for p in parts]), first.labels, first.layout)
