"""ResiDual and its baselines: small modules from cached unit data to logits of a frozen classifier.

Every variant of the paper maps cached per-sample data to an adapted image embedding ``z``
(``d_out``) and then to logits through the frozen zero-shot classifier
(:class:`~residual_core.core.zeroshot.ZeroShotClassifier`, a buffer, never trained):

- ``zero-shot`` (:class:`ZeroShot`): nothing trained; input the embedding.
- ``coarse`` (:class:`Coarse`, "Optimized"): one scalar per head; PCA coordinates.
- ``residual-fine`` (:class:`ResiDual`, "ResiDual*"): λ per PC at 90% EVR, heads only.
- ``residual-full`` (:class:`ResiDual`, "ResiDual"): λ per PC of heads and MLPs, embed kept.
- ``spectral-adapter``: λ per PC of the summed output.
- ``linear-adapter`` (:class:`LinearAdapter`): ``z W + b`` on the embedding.
- ``fine-tune`` (:class:`FineTune`): the whole vision tower, trained on images.

The variants read unit labels and the model's layout from their input: the reference PCA
(:class:`~residual_core.core.spectral.PCAResult`) and the :class:`~residual_core.core.units.Units`
they encode; no position along the unit axis is assumed.

ResiDual reweights each selected unit ``r`` in its principal basis ``B_r`` (rows, from reference
data) around its reference mean ``μ_r``: ``ĥ_r = B_rᵀ diag(λ_r) B_r (h_r − μ_r) [+ μ_r]``. The
PCA coordinates ``c_r = B_r (h_r − μ_r)`` do not depend on λ, so they are computed once
(:meth:`Variant.encode`, :func:`cache_inputs`) and training is one matmul per step,
``z = (λ ⊙ c) @ B_stack + offset [+ rest]``, with every selected unit's basis stacked in
``B_stack``; the backbone never runs during training.

Defaults (the book's choice; the authors' is an option): λ starts at 1 and ``μ_r`` is added back,
so a variant that keeps every unit and every direction starts *exactly* at the zero-shot model,
and a truncated one at its projection. The authors' code instead drops ``μ_r`` and draws
λ ~ N(1, 1) (unseeded); ``init="normal", add_mean=False`` reproduces it (seeded here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from residual_core.core.errors import InputError
from residual_core.core.spectral import PCAResult
from residual_core.core.units import UnitLayout, Units, is_head
from residual_core.core.zeroshot import ZeroShotClassifier

__all__ = [
    "VARIANTS",
    "Coarse",
    "FineTune",
    "LinearAdapter",
    "ResiDual",
    "StackedBasis",
    "Variant",
    "ZeroShot",
    "build_variant",
    "cache_inputs",
    "check_reference",
    "lambda_matrix",
    "lambda_summary",
    "make_basis",
    "pca_coordinates",
    "unit_lambdas",
]

VARIANTS = (
    "zero-shot",
    "coarse",
    "residual-fine",
    "residual-full",
    "spectral-adapter",
    "linear-adapter",
    "fine-tune",
)

Rest = Literal["drop", "keep", "mean"]
PCSpec = int | float | str | Mapping[str, int | float | str] | Callable[[str], int | float | str]

@dataclass
class StackedBasis:
    """Principal bases of the selected units, stacked row-wise into one matrix.

    Attributes:
        labels: Selected units, in stacking order.
        sizes: Number of kept principal components ``k_r`` of each selected unit.
        components: ``B_stack``: rows ``sum(sizes[:r]) : sum(sizes[:r+1])`` are ``B_r``.
        mean: Reference mean ``μ_r`` of each selected unit.
        other_labels: The units that are not selected (for the ``rest`` policy).
        other_mean: Reference mean of each non-selected unit.
        discarded: Fraction of each selected unit's reference variance outside its kept PCs.
        layout: The model's layout (from the reference PCA; ``None`` for an unlabelled one):
            the units a variant encodes must be this model's.
    """

    labels: list[str]
    sizes: list[int]
    components: Float[Tensor, "k_total d_out"]
    mean: Float[Tensor, "unit d_out"]
    other_labels: list[str]
    other_mean: Float[Tensor, "other d_out"]
    discarded: Float[Tensor, " unit"]
    layout: UnitLayout | None = None

    @property
    def n_components(self) -> int:
        """Total number of stacked components (the length of λ for per-PC variants)."""
        return int(sum(self.sizes))

    @property
    def d_out(self) -> int:
        """Embedding width."""
        return self.mean.shape[-1]

    def slices(self) -> dict[str, slice]:
        """Slice of ``components`` (and of a per-PC λ) belonging to each selected unit."""
        out, start = {}, 0
        for label, k in zip(self.labels, self.sizes, strict=True):
            out[label] = slice(start, start + k)
            start += k
        return out


def _resolve_k(spec: int | float | str, ev: Tensor, d: int, label: str) -> int:
    if isinstance(spec, str):
        if spec == "all":
            return d
        if spec == "rank":  # directions the reference data actually spans
            return max(1, int((ev > 1e-10 * ev.max().clamp_min(1e-300)).sum()))
        raise ValueError(f"unknown PC spec {spec!r} for unit {label}: use 'all', 'rank', an "
                         "int or an explained-variance fraction")
    if isinstance(spec, float):
        if not 0 < spec <= 1:
            raise ValueError(f"explained-variance fraction must be in (0, 1], got {spec}")
        if spec == 1.0:
            return d
        ratio = ev / ev.sum().clamp_min(1e-300)
        reached = ratio.cumsum(0) >= spec - 1e-9
        return int(reached.float().argmax()) + 1 if bool(reached.any()) else d
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ValueError(f"number of PCs must be ≥ 1, got {spec} for unit {label}")
        return min(spec, d)
    raise TypeError(f"bad PC spec {spec!r} for unit {label}")


def make_basis(
    pca: PCAResult,
    selected: Sequence[str],
    n_pcs: PCSpec = "all",
) -> StackedBasis:
    """Stack the leading principal components of the selected units.

    Args:
        pca: Labelled per-unit PCA of reference data (:func:`~residual_core.core.spectral.
            unit_pca`); its units not selected follow the variant's ``rest`` policy.
        selected: Units to reweight, by label.
        n_pcs: Components kept per unit: an int (at most that many), a float in (0, 1] (the
            fewest reaching that explained-variance ratio, e.g. 0.9), ``"all"`` (``d_out``),
            ``"rank"`` (the directions with non-zero reference variance), or a mapping /
            callable from label to one of those.

    Returns:
        The stacked basis (float32).

    Raises:
        KeyError: For a selected label that is not a unit of ``pca`` (or an unlabelled PCA).
        ValueError: If a label is selected twice.
    """
    labels = list(pca.labels or ())
    position = {label: i for i, label in enumerate(labels)}
    missing = [s for s in selected if s not in position]
    if missing:
        raise KeyError(f"selected units {missing[:5]} are not among the {len(labels)} units of "
                       "the reference PCA")
    if len(set(selected)) != len(selected):
        raise ValueError("a unit is selected twice")
    d = pca.mean.shape[-1]
    blocks, sizes, discarded = [], [], []
    for label in selected:
        i = position[label]
        spec = n_pcs(label) if callable(n_pcs) else (
            n_pcs[label] if isinstance(n_pcs, Mapping) else n_pcs
        )
        ev = pca.explained_variance[i].double()
        k = _resolve_k(spec, ev, min(d, pca.components.shape[1]), label)
        blocks.append(pca.components[i, :k].float())
        sizes.append(k)
        total = ev.sum()
        discarded.append(float(ev[k:].sum() / total) if total > 0 else 0.0)
    others = [label for label in labels if label not in set(selected)]
    sel_idx = [position[s] for s in selected]
    oth_idx = [position[o] for o in others]
    return StackedBasis(
        labels=list(selected),
        sizes=sizes,
        components=torch.cat(blocks) if blocks else torch.zeros(0, d, device=pca.mean.device),
        mean=pca.mean[sel_idx].float(),
        other_labels=others,
        other_mean=pca.mean[oth_idx].float(),
        discarded=torch.tensor(discarded, dtype=torch.float32),
        layout=pca.layout,
    )


def _coordinates(
    centred: Float[Tensor, "batch unit d_out"], components: Float[Tensor, "k_total d_out"],
    sizes: Sequence[int],
) -> Float[Tensor, "batch k_total"]:
    """``B_r (h_r − μ_r)`` for every unit, stacked; one batched matmul per run of equal ``k``."""
    coords = centred.new_empty(centred.shape[0], components.shape[0])
    start, r = 0, 0
    while r < len(sizes):
        end = r
        while end < len(sizes) and sizes[end] == sizes[r]:
            end += 1
        width = sizes[r] * (end - r)
        b = components[start : start + width].view(end - r, sizes[r], -1)
        coords[:, start : start + width] = torch.einsum("bud,ukd->buk", centred[:, r:end],
                                                        b).flatten(1)
        start, r = start + width, end
    return coords


@torch.no_grad()
def pca_coordinates(
    source: Units | Iterable[Units],
    pca: PCAResult,
    selected: Sequence[str],
    n_pcs: PCSpec = "all",
    *,
    batch_size: int = 1024,
) -> tuple[Float[Tensor, "n k_total"], StackedBasis]:
    """PCA coordinates ``c_r = B_r (h_r − μ_r)`` of the selected units, computed once.

    Args:
        source: Unit outputs, or batches of them.
        pca: Labelled per-unit PCA of reference data.
        selected: Units whose coordinates to compute.
        n_pcs: Components per unit (see :func:`make_basis`).
        batch_size: Chunk size for a :class:`Units` source.

    Returns:
        ``(coords, basis)``: coordinates stacked in the order of ``basis.components``.
    """
    basis = make_basis(pca, selected, n_pcs)
    if isinstance(source, Units):
        source = source.split(batch_size)
    parts = []
    for units in source:
        data = units.data
        centred = data[:, units.index(basis.labels)].float() - basis.mean.to(data.device)
        parts.append(_coordinates(centred, basis.components.to(data.device), basis.sizes))
    return torch.cat(parts), basis


class Variant(nn.Module):
    """Base class: cached inputs → adapted embedding ``z`` → logits of a frozen classifier.

    Subclasses set :attr:`name` and :attr:`default_lr` and implement :meth:`embed` and
    :meth:`encode` (unit outputs → the cached inputs the variant trains on).
    """

    name: str = "variant"
    default_lr: float = 1e-3

    def __init__(self, classifier: ZeroShotClassifier):
        super().__init__()
        self.classifier = classifier

    @property
    def n_trainable(self) -> int:
        """Number of trainable parameters (the classifier is a buffer, never counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def encode(self, units: Units) -> tuple[Tensor, ...]:
        """Turn unit outputs into the cached inputs the variant trains on."""
        raise NotImplementedError(f"{type(self).__name__} does not train on cached units")

    def embed(self, *inputs: Tensor) -> Float[Tensor, "batch d_out"]:
        """Adapted embedding ``z`` of cached inputs."""
        raise NotImplementedError

    def forward(self, *inputs: Tensor) -> Float[Tensor, "batch n_classes"]:
        """Logits of the frozen classifier on the adapted embedding."""
        return self.classifier(self.embed(*inputs))

    def options(self) -> dict[str, object]:
        """Settings worth recording next to a result (init, mean, rest policy...)."""
        return {"normalize": self.classifier.normalize_features}


class ZeroShot(Variant):
    """The unchanged model: ``z`` is the embedding itself (sum of all units). Nothing trained."""

    name = "zero-shot"
    default_lr = 0.0

    def encode(self, units: Units) -> tuple[Tensor]:
        """The embedding ``Σ_u h_u``."""
        return (units.sum(),)

    def embed(self, z: Float[Tensor, "batch d_out"]) -> Float[Tensor, "batch d_out"]:
        """Identity."""
        return z


class LinearAdapter(Variant):
    """``z' = z W + b`` on the embedding; ``W = I``, ``b = 0`` at start (the zero-shot model).

    Trainable parameters: ``d_out² + d_out``.
    """

    name = "linear-adapter"
    default_lr = 1e-3

    def __init__(self, classifier: ZeroShotClassifier):
        super().__init__(classifier)
        d, device = classifier.weights.shape[0], classifier.weights.device
        self.weight = nn.Parameter(torch.eye(d, device=device))
        self.bias = nn.Parameter(torch.zeros(d, device=device))

    def encode(self, units: Units) -> tuple[Tensor]:
        """The embedding ``Σ_u h_u``."""
        return (units.sum(),)

    def embed(self, z: Float[Tensor, "batch d_out"]) -> Float[Tensor, "batch d_out"]:
        """``z W + b``."""
        return torch.addmm(self.bias, z, self.weight)


class FineTune(Variant):
    """The whole vision tower trained on images, followed by the frozen classifier.

    Args:
        visual: The open_clip vision tower (``model.visual``); its parameters are trained.
        classifier: The frozen zero-shot classifier.
    """

    name = "fine-tune"
    default_lr = 1e-5

    def __init__(self, visual: nn.Module, classifier: ZeroShotClassifier):
        super().__init__(classifier)
        self.visual = visual
        for p in self.visual.parameters():
            p.requires_grad_(True)

    def embed(self, images: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch d_out"]:
        """The tower's (unnormalised) image embedding."""
        return self.visual(images)


class _Reweighting(Variant):
    """Shared machinery of the variants that train on cached PCA coordinates."""

    components: Float[Tensor, "k_total d_out"]
    offset: Float[Tensor, " d_out"]
    unit_of_pc: Int[Tensor, " k_total"]

    def __init__(
        self,
        classifier: ZeroShotClassifier,
        basis: StackedBasis,
        *,
        n_lambda: int,
        rest: str,
        init: str,
        seed: int,
        keep_residue: bool,
    ):
        super().__init__(classifier)
        if rest not in ("drop", "keep", "mean"):
            raise ValueError(f"rest must be 'drop', 'keep' or 'mean', got {rest!r}")
        if init not in ("ones", "normal"):
            raise ValueError(f"init must be 'ones' or 'normal', got {init!r}")
        self.basis = basis
        self.rest = rest
        self.init = init
        self.seed = seed
        self.keep_residue = keep_residue
        # Every tensor on the basis's device (a reference PCA fitted on the GPU stays there).
        device = basis.components.device
        self.register_buffer("components", basis.components.float().clone())
        self.register_buffer("unit_mean", basis.mean.float().clone())
        unit_of_pc = torch.repeat_interleave(
            torch.arange(len(basis.sizes)), torch.tensor(basis.sizes, dtype=torch.long)
        )
        self.register_buffer("unit_of_pc", unit_of_pc.to(device))
        offset = torch.zeros(basis.d_out, device=device)
        if rest == "mean" and basis.other_labels:
            offset = offset + basis.other_mean.float().to(device).sum(0)
        self.register_buffer("offset", offset)
        if init == "ones":
            lam = torch.ones(n_lambda)
        else:  # drawn on the CPU: the same λ for a seed whatever the device
            lam = 1.0 + torch.randn(n_lambda, generator=torch.Generator().manual_seed(seed))
        self.lam = nn.Parameter(lam.to(device))

    @property
    def uses_rest(self) -> bool:
        """Whether the cached inputs carry a per-sample ``rest`` vector."""
        return (self.rest == "keep" and bool(self.basis.other_labels)) or self.keep_residue

    @torch.no_grad()
    def encode(self, units: Units) -> tuple[Tensor, ...]:
        """PCA coordinates ``c_r = B_r (h_r − μ_r)`` of the selected units, stacked.

        Args:
            units: Unit outputs, holding every unit of the reference PCA (by label).

        Returns:
            ``(coords,)`` or ``(coords, rest)``: ``rest`` is the per-sample sum of the kept
            non-selected units (``rest="keep"``) plus, with ``keep_residue``, the part of each
            selected unit outside its kept PCs.

        Raises:
            KeyError: If a unit of the reference PCA is not among ``units``.
            InputError: For units of another model than the reference PCA's, or of another
                width.
        """
        if self.basis.layout is not None and units.layout != self.basis.layout:
            raise InputError(f"these units are another model's ({units.layout}) than the "
                             f"reference PCA's ({self.basis.layout}) this {self.name} was built "
                             "from")
        if units.data.shape[-1] != self.basis.d_out:
            raise InputError(f"units {units.data.shape[-1]} wide for a {self.name} built on "
                             f"{self.basis.d_out}-wide reference units")
        data = units.data
        centred = data[:, units.index(self.basis.labels)].float() - self.unit_mean.to(
            data.device)
        coords = _coordinates(centred, self.components.to(data.device), self.basis.sizes)
        if not self.uses_rest:
            return (coords,)
        rest = data.new_zeros(data.shape[0], data.shape[-1], dtype=torch.float32)
        if self.rest == "keep" and self.basis.other_labels:
            rest += data[:, units.index(self.basis.other_labels)].float().sum(1)
        if self.keep_residue:
            rest += centred.sum(1) - self._unit_reconstruction(coords).sum(1)
        return coords, rest

    def _unit_reconstruction(self, coords: Tensor) -> Tensor:
        """``B_rᵀ c_r`` per selected unit, shape (batch, unit, d_out)."""
        out = []
        for sl in self.basis.slices().values():
            out.append(coords[:, sl] @ self.components[sl].to(coords))
        return torch.stack(out, 1)

    def options(self) -> dict[str, object]:
        """Recorded settings."""
        return {
            **super().options(),
            "init": self.init,
            "rest": self.rest,
            "n_units": len(self.basis.labels),
            "keep_residue": self.keep_residue,
        }


class ResiDual(_Reweighting):
    """One learnable λ per kept principal component of every selected unit.

    ``z = Σ_r B_rᵀ diag(λ_r) B_r (h_r − μ_r) [+ μ_r] + rest``, computed from cached coordinates
    as ``z = (λ ⊙ c) @ B_stack + offset [+ rest]``.

    Args:
        classifier: Frozen zero-shot classifier.
        basis: Stacked bases of the selected units (:func:`make_basis`).
        rest: Non-selected units: ``"drop"`` (zero), ``"keep"`` (added unchanged, per sample)
            or ``"mean"`` (replaced by their reference mean).
        add_mean: Add ``μ_r`` back for the selected units (default; the authors' code does not).
        init: ``"ones"`` (λ = 1, default) or ``"normal"`` (λ ~ N(1, 1), seeded by ``seed``).
        seed: Seed of the ``"normal"`` init.
        keep_residue: Also add, untrained, each selected unit's part outside its kept PCs (so
            that λ = 1 reproduces the units exactly even with truncated bases).
        name: Variant name recorded in results.
    """

    default_lr = 0.8

    def __init__(
        self,
        classifier: ZeroShotClassifier,
        basis: StackedBasis,
        *,
        rest: str = "drop",
        add_mean: bool = True,
        init: str = "ones",
        seed: int = 0,
        keep_residue: bool = False,
        name: str = "residual",
    ):
        super().__init__(classifier, basis, n_lambda=basis.n_components, rest=rest,
                         init=init, seed=seed, keep_residue=keep_residue)
        self.name = name
        self.add_mean = add_mean
        if add_mean:
            self.offset += self.unit_mean.sum(0)

    def embed(
        self,
        coords: Float[Tensor, "batch k_total"],
        rest: Float[Tensor, "batch d_out"] | None = None,
    ) -> Float[Tensor, "batch d_out"]:
        """``(λ ⊙ c) @ B_stack + offset [+ rest]``: one matmul for all units."""
        z = torch.addmm(self.offset, coords * self.lam, self.components)
        return z if rest is None else z + rest

    def options(self) -> dict[str, object]:
        """Recorded settings."""
        return {**super().options(), "add_mean": self.add_mean}


class Coarse(_Reweighting):
    """One learnable scalar per selected unit ("Optimized"): ``z = Σ_r λ_r h_r [+ rest]``.

    Trains on the same cached coordinates as :class:`ResiDual`, using
    ``h_r = B_rᵀ c_r + μ_r`` (exact when ``B_r`` spans the unit: ``n_pcs="rank"`` or
    ``"all"``): ``z = (λ[unit_of_pc] ⊙ c) @ B_stack + λ @ M + offset``.
    """

    name = "coarse"
    default_lr = 0.8

    def __init__(
        self,
        classifier: ZeroShotClassifier,
        basis: StackedBasis,
        *,
        rest: str = "drop",
        init: str = "ones",
        seed: int = 0,
    ):
        super().__init__(classifier, basis, n_lambda=len(basis.labels), rest=rest,
                         init=init, seed=seed, keep_residue=False)

    def embed(
        self,
        coords: Float[Tensor, "batch k_total"],
        rest: Float[Tensor, "batch d_out"] | None = None,
    ) -> Float[Tensor, "batch d_out"]:
        """``Σ_r λ_r (B_rᵀ c_r + μ_r)`` as one matmul plus the λ-weighted means."""
        offset = self.offset + self.lam @ self.unit_mean
        z = torch.addmm(offset, coords * self.lam[self.unit_of_pc], self.components)
        return z if rest is None else z + rest


class _OutputSpectral(ResiDual):
    """Spectral adapter: ResiDual on one unit, the summed output (``encode`` sums first)."""

    def encode(self, units: Units) -> tuple[Tensor, ...]:
        """Coordinates of the summed embedding in its own principal basis."""
        return super().encode(Units(units.data.sum(1, keepdim=True), ("output",), units.layout))


def check_reference(reference: PCAResult, classifier: ZeroShotClassifier, name: str) -> None:
    """Refuse a reference PCA whose labels cannot be the rows they name, or another model's.

    A PCA's rows are found by label, so a label on the wrong row pairs a unit's principal
    components with another unit's outputs, silently. The labels must therefore be units of
    the PCA's own layout, in that model's order (``embed``, ``L{l}.mlp``..., ``L{l}H{h}``...;
    what :func:`~residual_core.core.spectral.unit_pca` gives, also after ``pca.select`` in that
    order), and the PCA, the layout and the classifier must have one width.

    Raises:
        InputError: For a PCA without a layout, labels of another model (not units of the
            layout), labels out of the model's order (e.g. reversed) or repeated, or widths that
            differ.
    """
    layout = reference.layout
    labels = list(reference.labels or ())
    if layout is None:
        raise InputError(f"{name} needs the model's layout with the reference PCA: compute it "
                         "with unit_pca from Units or an encoding store")
    order = {label: i for i, label in enumerate(layout.labels)}
    foreign = [label for label in labels if label not in order]
    if foreign:
        raise InputError(
            f"the reference PCA's labels {foreign[:3]}{' ...' if len(foreign) > 3 else ''} are "
            f"not units of its model ({layout.n_layers} layers × {layout.n_heads} heads): "
            "labels of another model? Compute the PCA with unit_pca on this model's units")
    positions = [order[label] for label in labels]
    if positions != sorted(set(positions)):
        raise InputError(
            "the reference PCA's labels are not in the model's unit order (embed, L{l}.mlp..., "
            f"L{{l}}H{{h}}...; here {labels[:3]} ...): reversed or shuffled labels would pair "
            "principal components with the wrong units. Use the PCA as unit_pca returns it, or "
            "select units in the model's order")
    widths = {"the reference PCA": reference.mean.shape[-1], "the layout's d_out": layout.d_out,
              "the classifier": classifier.d_out}
    if len(set(widths.values())) > 1:
        raise InputError("widths differ: " + ", ".join(f"{k} {v}" for k, v in widths.items())
                         + "; the PCA, its layout and the classifier must come from one model")


def build_variant(
    name: str,
    classifier: ZeroShotClassifier,
    *,
    reference: PCAResult | None = None,
    output_reference: PCAResult | None = None,
    visual: nn.Module | None = None,
    evr: float = 0.9,
    add_mean: bool = True,
    init: str = "ones",
    seed: int = 0,
    **kwargs,
) -> Variant:
    """Build one of :data:`VARIANTS` with the paper's settings.

    The units and the model's layout are read from ``reference``: a head keeps at most
    ``d_head`` PCs (``residual-full`` keeps ``d_head`` per head and ``d_out`` per MLP).

    Args:
        name: One of :data:`VARIANTS`.
        classifier: Frozen zero-shot classifier.
        reference: Labelled per-unit PCA of reference data, with the model's layout
            (:func:`~residual_core.core.spectral.unit_pca`; coarse / residual-*).
        output_reference: PCA of the summed embedding, one unit (spectral-adapter;
            ``unit_pca(..., output=True)``).
        visual: The vision tower (fine-tune).
        evr: Explained-variance ratio of the fine variant's PCs (0.9).
        add_mean: Add the reference means back (ResiDual variants).
        init: λ init, ``"ones"`` or ``"normal"`` (seeded).
        seed: Seed of the ``"normal"`` init.
        **kwargs: Passed to the variant's class (e.g. ``rest``, ``keep_residue``).

    Returns:
        The variant module; its ``n_trainable`` is the paper's parameter count.

    Raises:
        ValueError: For an unknown name (listing the valid ones) or a missing input.
        InputError: For a reference PCA whose labels do not match its layout, or a classifier
            of another width (see :func:`check_reference`).
    """
    if name == "zero-shot":
        return ZeroShot(classifier)
    if name == "linear-adapter":
        return LinearAdapter(classifier)
    if name == "fine-tune":
        if visual is None:
            raise ValueError("fine-tune needs the vision tower (visual=...)")
        return FineTune(visual, classifier)
    if name == "spectral-adapter":
        if output_reference is None:
            raise ValueError("spectral-adapter needs the PCA of the summed output "
                             "(output_reference=, from unit_pca(..., output=True))")
        if output_reference.mean.shape[-1] != classifier.d_out:
            raise InputError(f"the output PCA is {output_reference.mean.shape[-1]} wide but the "
                             f"classifier reads {classifier.d_out}-wide embeddings")
        output = PCAResult(output_reference.mean, output_reference.components,
                           output_reference.explained_variance, output_reference.n_samples,
                           ("output",))
        basis = make_basis(output, ["output"], "all")
        return _OutputSpectral(classifier, basis, add_mean=add_mean, init=init, seed=seed,
                               name=name, **kwargs)
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")
    if reference is None or reference.labels is None:
        raise ValueError(f"{name} needs the labelled per-unit reference PCA (reference=, from "
                         "unit_pca)")
    check_reference(reference, classifier, name)
    labels = list(reference.labels)
    heads = [label for label in labels if is_head(label)]
    if name == "coarse":
        basis = make_basis(reference, heads, "rank")
        return Coarse(classifier, basis, init=init, seed=seed, **kwargs)
    if name == "residual-fine":
        basis = make_basis(reference, heads, float(evr))
        return ResiDual(classifier, basis, add_mean=add_mean, init=init, seed=seed, name=name,
                        **kwargs)
    layout = reference.layout
    selected = [label for label in labels if label != "embed"]
    basis = make_basis(reference, selected,
                       lambda u: layout.d_head if is_head(u) else layout.d_out)
    kwargs.setdefault("rest", "keep")  # embed kept, untrained
    return ResiDual(classifier, basis, add_mean=add_mean, init=init, seed=seed, name=name,
                    **kwargs)


@torch.no_grad()
def cache_inputs(
    variant: Variant,
    source: Units | Iterable[Units | tuple[Units, Tensor]],
    *,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """Encode unit outputs once into the cached inputs a variant trains on.

    Args:
        variant: Any variant with an :meth:`Variant.encode`.
        source: :class:`Units` (encoded in chunks of ``batch_size``), or an iterable of
            batches of them (e.g. :meth:`EncodingStore.iter_units`) or of ``(units, targets)``
            pairs.
        batch_size: Chunk size for a :class:`Units` source.
        device: Where to encode (default: the source's device); results stay there.

    Returns:
        ``(inputs, targets)``: the concatenated cached inputs and the concatenated targets
        (``None`` if the source had none).
    """
    if isinstance(source, Units):
        source = source.split(batch_size)
    parts: list[tuple[Tensor, ...]] = []
    targets: list[Tensor] = []
    for item in source:
        units, target = (item, None) if isinstance(item, Units) else item
        if device is not None:
            units = units.to(device)
        parts.append(variant.encode(units))
        if target is not None:
            targets.append(torch.as_tensor(target).to(units.data.device))
    inputs = tuple(torch.cat(ts) for ts in zip(*parts, strict=True))
    return inputs, (torch.cat(targets) if targets else None)


def unit_lambdas(variant: Variant, label: str) -> Float[Tensor, " k"]:
    """The λ of one unit (per PC for ResiDual, a 1-vector for coarse), detached, on CPU."""
    if not isinstance(variant, _Reweighting):
        raise TypeError(f"{type(variant).__name__} has no per-unit λ")
    lam = variant.lam.detach().cpu()
    if label not in variant.basis.labels:
        raise KeyError(f"{label!r} is not a selected unit of this {variant.name}")
    if isinstance(variant, Coarse):
        return lam[variant.basis.labels.index(label)].reshape(1)
    return lam[variant.basis.slices()[label]]


def lambda_matrix(
    variant: Variant, labels: Sequence[str] | None = None, k: int | None = None
) -> tuple[Float[Tensor, "unit k"], list[str]]:
    """λ of several units as rows of a matrix padded with NaN (for heatmaps).

    Args:
        variant: A trained ResiDual / coarse variant.
        labels: Units to include (default: every selected unit).
        k: Number of leading PCs to show (default: the largest ``k_r``).

    Returns:
        ``(matrix, labels)``.
    """
    labels = list(variant.basis.labels if labels is None else labels)
    rows = [unit_lambdas(variant, label) for label in labels]
    width = max(len(r) for r in rows) if k is None else k
    out = torch.full((len(rows), width), float("nan"))
    for i, row in enumerate(rows):
        out[i, : min(width, len(row))] = row[:width]
    return out, labels


def lambda_summary(variant: Variant, top: int = 3) -> pd.DataFrame:
    """Per selected unit: how far λ moved from 1 and its most amplified / suppressed PCs.

    Args:
        variant: A trained ResiDual / coarse variant.
        top: How many PCs to list as most amplified and most suppressed.

    Returns:
        One row per unit: ``unit``, ``n_pcs``, ``mean_abs_dev`` (mean ``|λ − 1|``),
        ``lambda_mean``, ``lambda_max``, ``lambda_min``, ``top_amplified`` and
        ``top_suppressed`` (lists of ``(pc, λ)`` pairs, PC indices counted from 0), sorted by
        ``mean_abs_dev`` descending.
    """
    records = []
    for label in variant.basis.labels:
        lam = unit_lambdas(variant, label)
        order = torch.argsort(lam, descending=True)
        records.append({
            "unit": label,
            "n_pcs": len(lam),
            "mean_abs_dev": float((lam - 1).abs().mean()),
            "lambda_mean": float(lam.mean()),
            "lambda_max": float(lam.max()),
            "lambda_min": float(lam.min()),
            "top_amplified": [(int(i), float(lam[i])) for i in order[:top]],
            "top_suppressed": [(int(i), float(lam[i])) for i in order.flip(0)[:top]],
        })
    df = pd.DataFrame.from_records(records)
    return df.sort_values("mean_abs_dev", ascending=False, ignore_index=True)
