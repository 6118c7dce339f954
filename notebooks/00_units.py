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
# **The tutorial CLIP is small and briefly trained** (9 min on 2 CPU cores). On its own
# training distribution it solves every attribute zero-shot well above chance (shape, colour,
# size, texture, position, background, star count; its model card has the numbers); on the
# shifted distributions (another palette, clutter, sketches, dim light) its zero-shot accuracy
# drops while its units still carry the attributes, and that gap is what chapters 04–05 work
# on. Its model card lists what it does and does not know. The decomposition is exact for any
# weights, so everything in this chapter holds; the later chapters say where their findings
# depend on the model's training.
# :::
#
# The cell below holds the chapter's parameters; the runner can override them, e.g.
# `python -m residual_core.runner run 00_units --param n_images=64 --param device=cuda`.

# %% tags=["parameters", "hide-input"]
model = "tutorial"  # a key of residual_core.models.list_models(), e.g. "openclip_b"
images_from = "world2.reference"  # a dataset of residual_core.data.registry, or "noise"
n_images = 8
centering = "shared"  # final LayerNorm mean split over units: "shared" (the authors') or "per-unit"
compare_images = 2000  # images for the comparison of the two centrings (0: skip it)
dictionary = "tutorial"  # texts for that comparison's TextSpan ("general" for natural images)
seed = 0
device = "cpu"
weights = "pretrained"  # or "random": random-initialised stand-in (residual_core.data.synthetic)
results_file = None  # CSV of the key results (the runner sets it next to the notebook)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

import residual_core as rc
from residual_core.analysis.conventions import compare_centerings
from residual_core.analysis.decomposition import relative_error, unit_norm_table
from residual_core.analysis.exemplars import captions_of
from residual_core.data.world import distributions, world_of
from residual_core.plots.common import figure_picker
from residual_core.plots.images import plot_image_grid
from residual_core.plots.units import norm_grid, plot_layer_head_heatmap, plot_layer_units
from residual_core.runner.records import write_results

_ = torch.manual_seed(seed)

# %% [markdown]
# ## The model
#
# The tutorial profile uses the tiny CLIP shipped with the book (`residual_core/tutorial/`): an
# ordinary open_clip `CLIP` with an 8-layer, 6-head ViT on 64×64 images cut into 16-pixel
# patches, trained on a procedural world of one object, a background and a row of stars, with
# lighting, position, scale and rotation that no caption mentions (see its model card). The
# decomposition is exact for any weights, so the reconstruction check below holds whatever the
# model learnt; which units carry *what* is the subject of the later chapters. The paper
# profile (`--preset paper`) loads real weights on a GPU box.

# %%
# The one line that picks the model; everything below reads its sizes from the model object.
loaded = rc.load_model(model, device=device, weights=weights)
net = loaded.model
layout = rc.check_supported(net)
display(pd.DataFrame([vars(layout) | {"units": layout.n_units}], index=[model]))

# %% [markdown]
# `check_supported` reads the sizes from the model object and refuses variants where the
# decomposition would not be exact (attention pooling, register tokens, ...).
#
# ## What the images look like
#
# Sixteen test images of `images_from`, each with a caption drawn the way the training
# captions were: a caption mentions a random subset of the attributes, the frequently captioned
# ones (shape, colour) more often than the rare ones (position, star count). For a dataset
# without captions, the class name is shown instead.

# %% tags=["hide-input"]
if images_from != "noise":
    samples = rc.load_dataset(images_from, "test", size=16)
    picked = list(range(len(samples)))
    plot_image_grid([samples.image(i) for i in picked], captions_of(samples, picked, seed),
                    ncols=8, size=1.4)
    plt.show()

# %% [markdown]
# *The object, its background and the row of stars vary independently; a caption names only
# some of them.*
#
# The later chapters also use shifted versions of this world, which the model never saw in
# training: the same kind of scene with heavy pixel noise, another colour palette, a cluttered
# background, as an outline sketch, in dim light with a colour cast, and uniform noise images
# (the control).

# %% tags=["hide-input"]
if images_from.startswith("world"):
    shifted = {d: rc.load_dataset(f"{d}.shape", "test", size=1)
               for d in distributions(world_of(images_from))}
    plot_image_grid([d.image(0) for d in shifted.values()], list(shifted), ncols=len(shifted),
                    size=1.6)
    plt.show()

# %% [markdown]
# *One image of each distribution: the shift changes how a scene looks, not what is in it
# (except `world2_random`, which has no scene at all).*
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
    images, _ = rc.load_dataset(images_from, "test", loaded.preprocess, size=n_images).batch()
images = images.to(device)

dec = rc.decompose(net, images, centering=centering)
print(dec)
first_head = layout.n_layers + 1
print("labels:", dec.labels[:3], "...", dec.labels[first_head : first_head + 2], "...",
      dec.labels[-1])

# %% [markdown]
# Units are always addressed by **label**, never by position: one label gives that unit's
# `(batch, d_out)` outputs, a list of labels a smaller labelled stack.

# %%
last = layout.n_layers - 1
print(dec[["embed", f"L{last}.mlp", f"L{last}H0"]].shape, dec[f"L{last}H0"].shape)

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
write_results(table, results_file, model=loaded.name, max_rel_error=error)

# %% tags=["hide-input"]
embed_norm = table.loc[table.kind == "embed", "norm"].mean()
plot_layer_head_heatmap(norm_grid(table), embed_norm)
plt.show()

# %% [markdown]
# *Brighter cells write larger vectors into the embedding; compare the heads of the last layer
# with those of the first, and each layer's MLP (last column) with its heads.*

# %% [markdown]
# ## One layer at a time
#
# Each unit's contribution also varies from image to image. Choose a layer to see its heads and
# its MLP for every image (the figures are precomputed, so the choice works on the static page
# too; the logarithmic colour scale is shared across layers).

# %% tags=["hide-input"]
norms = table.loc[table.kind != "embed", "norm"]
limits = dict(vmin=norms.min(), vmax=norms.max())
figures = {
    f"layer {layer}": plot_layer_units(table, layer, **limits)
    for layer in range(layout.n_layers)
}
display(figure_picker(figures, "Layer", default=f"layer {layout.n_layers - 1}"))

# %% [markdown]
# *Each row is an image: a unit whose colour changes along its column writes a different
# amount for different images.*

# %% [markdown]
# ## Two exact ways to split the LayerNorm's mean
#
# The final LayerNorm subtracts the mean $\mu$ of the whole stream before scaling. Split over the
# units, that subtraction can be written two ways, both exact:
#
# - **shared** (the default, and what the paper's authors' code does): every unit gets an equal
#   share of the whole stream's mean, like the LayerNorm bias $\beta$,
#   $c_u = \big(\gamma \odot x_u/\sigma - (\gamma \odot \mu/\sigma - \beta)/N_u\big) P$;
# - **per-unit** (TransformerLens's convention): every unit is centred on its own mean,
#   $c_u = \big(\gamma \odot (x_u - \bar x_u)/\sigma + \beta/N_u\big) P$, so no unit carries
#   another unit's mean.
#
# Here $N_u$ is the number of units sharing a constant ($2L+1$ residual writes, each attention
# write split over its $H$ heads). The sums are identical; single units differ by a multiple of
# one fixed direction $\gamma P$, so every per-unit statistic of the later chapters can move a
# little. The comparison below decomposes `compare_images` images once and projects them both
# ways (the parameter `centering` of every chapter picks one).

# %%
if compare_images:
    words = rc.load_dictionary(dictionary).embed(loaded)
    if images_from == "noise":
        generator = torch.Generator().manual_seed(seed + 1)
        batches = (torch.rand(256, 3, *net.visual.image_size, generator=generator).to(device)
                   * 2 - 1 for _ in range(-(-compare_images // 256)))
    else:
        data = rc.load_dataset(images_from, "train", loaded.preprocess, size=compare_images)
        batches = (x.to(device) for x, _ in torch.utils.data.DataLoader(data, batch_size=256))
    cmp = compare_centerings(net, batches, words, n_texts=3, seed=seed)
    display(cmp.summary().style.format({"median_rel_diff": "{:.1%}", "max_rel_diff": "{:.1%}",
                                        "median_twonn_change": "{:.2f}"}))
    texts = cmp.texts.set_index("unit")
    display(texts.assign(**{c: texts[c].str.join(" · ") for c in ("shared", "per-unit")}))

# %% [markdown]
# The first table gives, per kind of unit, the size of the difference (its norm over the norm
# of the shared unit: the median over units of each unit's median over images, and the largest
# over all), how many units' linear ID (PCA-99) changes, and the median change of their TwoNN
# ID. The second lists the first three TextSpan texts of each head of the last layer under both
# centrings, and how many they share. The book uses the authors' convention everywhere, so its
# numbers are comparable with the paper's.

# %% [markdown]
# ## Summary
#
# - A unit is one additive writer to the CLS residual stream: the embedding, an MLP or a head.
# - `decompose(model, images)` returns all of them as labelled `Units`: a `(batch, unit, d_out)`
#   stack picked by label (`units["L3H1"]`, `units.heads(layer=3)`); their sum is the image
#   embedding, exactly.
# - Sizes alone do not say what a unit carries; the later chapters ask that with PCA, text
#   and probes.

# %% [markdown]
# ## Exercises
#
# Each changes one parameter or one line; on the smoke preset a run takes well under a minute,
# e.g. `python -m residual_core.runner run 00_units --preset smoke --param centering=per-unit`.
#
# **1.** Set `centering = "per-unit"`. Does the reconstruction check still pass?
#
# :::{dropdown} Solution
# Yes, with a maximum relative error of the same order (4.7e-07 against 4.3e-07 with `shared`
# on the smoke preset, float32 rounding): the two centrings share the LayerNorm's constants
# out differently between the units, but their sum is the same embedding. Single units change,
# which is what the last section's tables measure.
# :::
#
# **2.** Set `images_from = "noise"`: uniform noise instead of world images. Is the
# decomposition still exact, and do the unit norms change?
#
# :::{dropdown} Solution
# Still exact (3.9e-07 on the smoke preset): the decomposition is algebra on the model's own
# operations and holds for any input. The norms change: on the smoke preset the mean head norm
# goes from 0.90 to 1.09 and the embedding unit's from 2.1 to 2.8 (for the CLS token it is one
# fixed vector: only the final LayerNorm's per-image scale and its share of the stream mean
# move it).
# :::
#
# **3.** In the reconstruction cell, replace `dec.total()` by
# `dec.total() - dec[f"L{last}H0"]`, i.e. leave out one head of the last layer. What happens?
#
# :::{dropdown} Solution
# The check fails: the relative error jumps from about 4e-7 to 0.020 (smoke preset; 0.027 on
# the tutorial preset), far above float32 rounding although that head is one of 48 and a small
# one (mean norm 0.41 against 0.90 for the average head, smoke preset). Leaving out the
# embedding unit instead gives 0.10 (0.11 on the tutorial preset), the last MLP 0.075 (both
# presets).
# :::
