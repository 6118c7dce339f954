"""The two exact centrings of the final LayerNorm, compared on the same images.

:func:`residual_core.core.decompose.decompose` can split the final LayerNorm's mean over the units
in two exact ways (``centering="shared"``, the paper authors' form, or ``"per-unit"``). Sums are
identical; single units are not, so every per-unit statistic can move. :func:`compare_centerings`
decomposes the images once (the raw form does not depend on the centring), projects them both ways,
and measures what moves: the per-unit difference, the linear (PCA-99) and TwoNN intrinsic
dimensions, and the first TextSpan texts of one layer's heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn

from residual_core.core.decompose import CENTERINGS, UnitProjector, check_supported, decompose_raw
from residual_core.core.dictionary import TextDictionary
from residual_core.core.intrinsic_dim import linear_id, twonn
from residual_core.core.spectral import unit_pca
from residual_core.core.textspan import textspan
from residual_core.core.units import Units, label_table

__all__ = ["CenteringComparison", "compare_centerings"]


@dataclass
class CenteringComparison:
    """What changes between the two centrings.

    Attributes:
        units: One row per unit: ``unit``, ``rel_diff_median`` and ``rel_diff_max`` (the norm
            of the difference between the two centrings' contributions over the norm of the
            shared one, over images), then ``linear_id`` and ``twonn`` under each centring
            (``linear_id_shared``, ``linear_id_per-unit``, ...).
        texts: One row per head of the compared layer: ``unit``, the first TextSpan texts under
            each centring (``shared``, ``per-unit``) and ``common`` (texts in both).
    """

    units: pd.DataFrame
    texts: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """Per kind of unit (embed, MLP, head): how much the units and their IDs move.

        Returns:
            Indexed by kind: ``units``, ``median_rel_diff`` (median over units of each unit's
            median relative difference), ``max_rel_diff``, ``linear_id_changed`` (units whose
            linear ID differs) and ``median_twonn_change`` (median absolute TwoNN change).
        """
        t = self.units
        names = {"embed": "embed", "mlp": "MLP", "head": "head"}
        kind = label_table(t.unit.tolist()).kind.map(names).tolist()
        t = t.assign(kind=kind,
                     id_changed=t["linear_id_shared"] != t["linear_id_per-unit"],
                     twonn_change=(t["twonn_shared"] - t["twonn_per-unit"]).abs())
        return t.groupby("kind", sort=False).agg(
            units=("unit", "size"), median_rel_diff=("rel_diff_median", "median"),
            max_rel_diff=("rel_diff_max", "max"), linear_id_changed=("id_changed", "sum"),
            median_twonn_change=("twonn_change", "median"))


@torch.no_grad()
def compare_centerings(
    model: nn.Module,
    batches: Iterable[Float[Tensor, "batch 3 height width"]],
    dictionary: TextDictionary,
    *,
    layer: int = -1,
    n_texts: int = 3,
    threshold: float = 0.99,
    max_points: int | None = None,
    seed: int = 0,
) -> CenteringComparison:
    """Decompose images once and compare the two centrings unit by unit.

    Args:
        model: An open_clip model (or vision tower) supported by the decomposition.
        batches: Preprocessed image batches on the model's device.
        dictionary: An embedded dictionary for TextSpan (``load_dictionary(name).embed(loaded)``).
        layer: Layer whose heads are explained with TextSpan (negative counts from the end).
        n_texts: TextSpan texts per head.
        threshold: Explained variance of the linear ID.
        max_points: TwoNN subsample (``None``: every image).
        seed: Seed of the TwoNN subsample.

    Returns:
        The per-unit and per-head comparison tables.
    """
    layout = check_supported(model)
    projectors = {c: UnitProjector.from_model(model, c) for c in CENTERINGS}
    parts: dict[str, list[Units]] = {c: [] for c in CENTERINGS}
    for images in batches:
        raw = decompose_raw(model, images)
        for c, projector in projectors.items():
            parts[c].append(projector(raw).to("cpu"))
    units = {c: Units.cat(p) for c, p in parts.items()}
    labels = layout.labels
    a, b = units["shared"].data, units["per-unit"].data
    rel = ((a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-30)).double()  # (n, unit)
    table = pd.DataFrame({"unit": labels, "rel_diff_median": rel.median(0).values.numpy(),
                          "rel_diff_max": rel.max(0).values.numpy()})
    pcas = {c: unit_pca(u) for c, u in units.items()}
    for c, u in units.items():
        table[f"linear_id_{c}"] = linear_id(pcas[c].explained_variance_ratio, threshold).numpy()
        table[f"twonn_{c}"] = [twonn(u[label], max_points=max_points, seed=seed)
                               for label in labels]

    heads = layout.heads(layer)
    picks = {c: textspan(pcas[c].select(heads), dictionary, n_iters=n_texts)
             for c in CENTERINGS}
    rows = []
    for head in heads:
        chosen = {c: picks[c][head].texts for c in CENTERINGS}
        rows.append({"unit": head, **{c: chosen[c] for c in CENTERINGS},
                     "common": len(set(chosen["shared"]) & set(chosen["per-unit"]))})
    return CenteringComparison(table, pd.DataFrame(rows))
