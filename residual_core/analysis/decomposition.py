"""What chapter 00 computes: the reconstruction check and every unit's norm per image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from residual_core.core.units import Units, label_table

__all__ = ["relative_error", "unit_norm_table"]


def relative_error(
    approx: Float[Tensor, "batch d_out"], exact: Float[Tensor, "batch d_out"]
) -> float:
    """Largest per-sample relative error ``max_i ‖approx_i − exact_i‖₂ / ‖exact_i‖₂``."""
    diff = torch.linalg.vector_norm(approx.float() - exact.float(), dim=-1)
    return float((diff / torch.linalg.vector_norm(exact.float(), dim=-1)).max())


def unit_norm_table(units: Units) -> pd.DataFrame:
    """L2 norm of every unit's contribution for every image, in long form.

    Args:
        units: Decomposed units (:func:`~residual_core.core.decompose.decompose`).

    Returns:
        One row per (image, unit) with columns ``image``, ``unit`` (label), ``kind``
        (``embed``/``mlp``/``head``), ``layer`` (-1 for the embedding), ``head`` (-1 unless a
        head) and ``norm``.
    """
    norms = torch.linalg.vector_norm(units.data.float(), dim=-1).cpu().numpy()  # (batch, unit)
    meta = label_table(units.labels)
    batch = norms.shape[0]
    table = meta.loc[np.tile(np.arange(len(meta)), batch)].reset_index(drop=True)
    table.insert(0, "image", np.repeat(np.arange(batch), len(meta)))
    table["norm"] = norms.reshape(-1)
    return table
