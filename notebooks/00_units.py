# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Units: the exact decomposition
#
# A CLIP-style vision transformer does not compute its image embedding in one opaque step. Its
# CLS token carries a *residual stream* that every block only ever **adds to**: first the patch
# and position embedding, then, layer after layer, the output of each attention head and of each
# MLP. Each of these additive writers is a **unit**. For a model with $L$ layers and $H$ heads
# there are $1 + L + L H$ units: `embed`, `L{l}.mlp` and `L{l}H{h}`.
#
# The stream ends in a LayerNorm and a linear projection $P$. Once the per-image scale of that
# LayerNorm is fixed, both are linear, so the embedding splits *exactly* into one vector per unit:
#
# $$
# y \;=\; \mathrm{LN}\Big(e + \sum_{l}\big(\textstyle\sum_h a_{l,h} + m_l\big)\Big) P
#   \;=\; \sum_{u \in \text{units}} c_u, \qquad c_u \in \mathbb{R}^{d_\text{out}} .
# $$
#
# Everything in this book (spectral analysis of the units, selecting units, ResiDual itself)
# works on these $c_u$. This chapter builds a model, decomposes a batch of images, checks that
# the units really add up to the embedding, and looks at how large each unit's contribution is.
#
# :::{note}
# **The tutorial CLIP is small and briefly trained** (41 min on 2 CPU cores). On its own
# training distribution it solves every attribute zero-shot (shape, colour, size, texture,
# position, background, star count: 0.998–1.000); on the shifted distributions (another
# palette, clutter, sketches) its zero-shot accuracy drops while its units still carry the
# attributes, and that gap is what chapters 04–05 work on. Its model card lists what it does and
# does not know. The decomposition is exact for any weights, so everything in this chapter
# holds; the later chapters say where their findings depend on the model's training.
# :::
#
# The cell below holds the chapter's parameters; the runner can override them, e.g.
# `python -m residual_core.runner run 00_units --param n_images=64 --param device=cuda`.

# %% tags=["parameters"]
model = "tutorial"  # a key of residual_core.models.list_models(), e.g. "openclip_b"
images_from = "world.reference"  # a dataset of residual_core.datasets, or "noise"
n_images = 8
seed = 0
device = "cpu"
weights = "pretrained"  # or "random": random-initialised stand-in (residual_core.synthetic)
results_file = None  # CSV of the key results (the runner sets it next to the notebook)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from residual_core import chapter, decompose
from residual_core.datasets import load_dataset
from residual_core.decompose import check_supported
from residual_core.plotting import (
    figure_picker,
    layer_head_grid,
    plot_layer_head_heatmap,
    plot_layer_units,
    relative_error,
    unit_norm_table,
)

_ = torch.manual_seed(seed)

# %% [markdown]
# ## The model
#
# The tutorial profile uses the tiny CLIP shipped with the book (`residual_core/tutorial/`): an
# ordinary open_clip `CLIP` with a 4-layer, 4-head ViT on 64×64 images, trained on a procedural
# world of one object, a background and a row of stars (see its model card). The decomposition is exact for any weights, so the
# reconstruction check below holds whatever the model learnt; which units carry *what* is the
# subject of the later chapters. The paper profile (`--preset paper`) loads real weights on a
# GPU box.

# %%
# The one line that picks the model; everything below reads its sizes from the model object.
loaded = chapter.load_model(model, weights, device)
net = loaded.model
layout = check_supported(net)
display(pd.DataFrame([vars(layout) | {"units": layout.n_units}], index=[model]))

# %% [markdown]
# `check_supported` reads the sizes from the model object and refuses variants where the
# decomposition would not be exact (attention pooling, register tokens, ...).
#
# ## Decomposing a batch
#
# A few images of the reference set (or uniform noise in $[-1, 1]$ after preprocessing with
# `images_from = "noise"`), preprocessed by the model's own transform.

# %%
if images_from == "noise":
    size = net.visual.image_size
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n_images, 3, *size, generator=generator) * 2 - 1
else:
    data = load_dataset(images_from, "test", loaded.preprocess, size=n_images)
    images = torch.stack([data[i][0] for i in range(n_images)])
images = images.to(device)

dec = decompose(net, images)
print("units:", tuple(dec.units.shape), "(batch, unit, d_out)")
first_head = layout.n_layers + 1
print("labels:", dec.labels[:3], "...", dec.labels[first_head : first_head + 2], "...",
      dec.labels[-1])

# %% [markdown]
# Units are always addressed by **label**, never by position:

# %%
last = layout.n_layers - 1
print(dec.select(["embed", f"L{last}.mlp", f"L{last}H0"]).shape)

# %% [markdown]
# ## The reconstruction is exact
#
# Summing the units over the `unit` axis must give back `encode_image` (unnormalised), up to
# float32 rounding. The chapter stops with an error if it does not.

# %%
with torch.no_grad():
    reference = net.encode_image(images)
error = relative_error(dec.total(), reference)
print(f"max relative error of units.sum(1) vs encode_image: {error:.2e}")
assert error < 1e-5, f"decomposition is not exact: relative error {error:.2e}"

# %% [markdown]
# ## How large is each unit?
#
# The norm $\lVert c_u \rVert_2$ of a unit's contribution, averaged over the images, by layer and
# head, with each layer's MLP in the last column (logarithmic colour scale).

# %%
table = unit_norm_table(dec)
chapter.write_results(table, results_file, model=loaded.name, max_rel_error=error)
embed_norm = table.loc[table.kind == "embed", "norm"].mean()
plot_layer_head_heatmap(layer_head_grid(table), embed_norm)
plt.show()

# %% [markdown]
# ## One layer at a time
#
# Each unit's contribution also varies from image to image. Choose a layer to see its heads and
# its MLP for every image (the figures are precomputed, so the choice works on the static page
# too; the logarithmic colour scale is shared across layers).

# %%
norms = table.loc[table.kind != "embed", "norm"]
limits = dict(vmin=norms.min(), vmax=norms.max())
figures = {
    f"layer {layer}": plot_layer_units(table, layer, **limits)
    for layer in range(layout.n_layers)
}
display(figure_picker(figures, "Layer", default=f"layer {layout.n_layers - 1}"))

# %% [markdown]
# ## Summary
#
# - A unit is one additive writer to the CLS residual stream: the embedding, an MLP or a head.
# - `decompose(model, images)` returns all of them as a `(batch, unit, d_out)` tensor with
#   stable labels; their sum is the image embedding, exactly.
# - Sizes alone do not say what a unit carries; the later chapters ask that with PCA, text
#   and probes.
