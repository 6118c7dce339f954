"""What chapter 00 computes: the reconstruction check and every unit's norm per image."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from residual_core.core.decompose import Decomposition

__all__ = ["relative_error", "unit_norm_table"]

_LABEL = re.compile(r"^(?:embed|L(?P<layer>\d+)(?:\.(?P<mlp>mlp)|H(?P<head>\d+)))$")


def relative_error(
    approx: Float[Tensor, "batch d_out"], exact: Float[Tensor, "batch d_out"]
) -> float:
    """Largest per-sample relative error ``max_i ‖approx_i − exact_i‖₂ / ‖exact_i‖₂``."""
    diff = torch.linalg.vector_norm(approx.float() - exact.float(), dim=-1)
    return float((diff / torch.linalg.vector_norm(exact.float(), dim=-1)).max())


def unit_norm_table(dec: Decomposition) -> pd.DataFrame:
    """L2 norm of every unit's contribution for every image, in long form.

    Args:
        dec: A decomposition with the standard labels (``embed``, ``L{l}.mlp``, ``L{l}H{h}``).

    Returns:
        One row per (image, unit) with columns ``image``, ``unit`` (label), ``kind``
        (``embed``/``mlp``/``head``), ``layer`` (-1 for the embedding), ``head`` (-1 unless a
        head) and ``norm``.
    """
    norms = torch.linalg.vector_norm(dec.units.float(), dim=-1).cpu().numpy()  # (batch, unit)
    rows = []
    for label in dec.labels:
        match = _LABEL.match(label)
        if match is None:
            raise ValueError(f"unexpected unit label {label!r}")
        kind = "embed" if label == "embed" else "mlp" if match["mlp"] else "head"
        layer = -1 if kind == "embed" else int(match["layer"])
        head = int(match["head"]) if kind == "head" else -1
        rows.append((label, kind, layer, head))
    meta = pd.DataFrame(rows, columns=["unit", "kind", "layer", "head"])
    batch = norms.shape[0]
    table = meta.loc[np.tile(np.arange(len(meta)), batch)].reset_index(drop=True)
    table.insert(0, "image", np.repeat(np.arange(batch), len(meta)))
    table["norm"] = norms.reshape(-1)
    return table
