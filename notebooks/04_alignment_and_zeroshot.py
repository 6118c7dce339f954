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
# # Alignment and zero-shot accuracy
#
# Paper §4 turns from *what* heads carry to *whether the text side can read it*. A zero-shot
# classifier compares the image embedding, the sum of all units, with text embeddings of the
# class prompts. If the information a task needs sits in a few heads while the other units add
# variance that the class prompts do not separate, the classifier sees it through noise. The
# paper makes three points, which this chapter measures on the tutorial's downstream tasks (the
# shifted distributions, which the tiny CLIP never saw in training; on its training
# distribution it is at ceiling zero-shot):
#
# 1. the image tower often *has* more than zero-shot classification *uses* (the **headroom**
#    between zero-shot accuracy and a linear probe);
# 2. only some units matter for the zero-shot output: TextSpan found that mean-ablating all but
#    the last few attention layers of CLIP barely changes accuracy (**ablation by layer**), and
#    the paper shows that keeping a small, well-chosen set of heads (others replaced by their
#    mean) can match or beat the full model (**coarse selection**);
# 3. tasks whose relevant heads are specialised and aligned with text do better zero-shot (the
#    **specialisation–performance link**).
#
# Every number in the text cells' conclusions is computed and printed by the cell above it; the
# interpretation is for this run of the tutorial model.

# %% tags=["parameters", "hide-input"]
model = "tutorial"  # a key of residual_core.models.list_models()
tasks = [  # every drawn attribute of every natural shift (data.world.downstream_tasks)
    "world2_noise.shape", "world2_noise.color", "world2_noise.size", "world2_noise.texture",
    "world2_noise.position", "world2_noise.background", "world2_noise.count",
    "world2_palette.shape", "world2_palette.color", "world2_palette.size",
    "world2_palette.texture", "world2_palette.position", "world2_palette.background",
    "world2_palette.count",
    "world2_clutter.shape", "world2_clutter.color", "world2_clutter.size",
    "world2_clutter.texture", "world2_clutter.position", "world2_clutter.background",
    "world2_clutter.count",
    "world2_sketch.shape", "world2_sketch.size", "world2_sketch.position", "world2_sketch.count",
    "world2_dark.shape", "world2_dark.color", "world2_dark.size", "world2_dark.texture",
    "world2_dark.position", "world2_dark.background", "world2_dark.count",
]
task_families = {}  # task -> dictionary family, where the name does not say it (paper datasets)
reference = "world2.reference"  # coarse selection's mean ablation and TextSpan use its images
dictionary = "tutorial"
modifier_families = []
train_size = 2000  # probes are fitted on train
val_size = 1000  # heads are ranked and k is chosen on val
test_size = 2000  # everything reported is on test
reference_size = 5000
n_texts = 8
rank = 80
span = "uncentred"  # TextSpan span: "uncentred" (the authors' SVD of raw outputs) or "centred"
random_seeds = 10  # seeds of the random ranking R
k_carriers = 2  # "heads a task relies on": its best heads by probe
ablation_mean = "evaluated"  # layer ablation: the tested images' mean (TextSpan's) or "reference"
default_task = "world2_clutter.color"
seed = 0
centering = "shared"  # final LayerNorm mean split over units: "shared" (the authors') or "per-unit"
device = "cpu"
weights = "pretrained"  # or "random": random-initialised stand-in (residual_core.data.synthetic)
results_file = None  # CSV of the key results (the runner sets it next to the notebook)

# %%
import matplotlib.pyplot as plt
import torch
from IPython.display import display

import residual_core as rc
from residual_core.analysis import alignment as al
from residual_core.analysis import claims as ca
from residual_core.analysis import specialization as spec
from residual_core.plots import heads as ph
from residual_core.plots.common import claims_view, figure_picker, styled, task_label
from residual_core.runner.records import write_results
from residual_core.tutorial.world import mention_rates

_ = torch.manual_seed(seed)

# %% [markdown]
# ## Model, encodings and classifiers
#
# Units are encoded once per image set (cached); the reference split gives every unit's mean
# for mean ablation and the covariances for TextSpan. Each task's zero-shot classifier is the
# usual prompt ensemble over its templates, with cosine logits.

# %%
loaded = rc.load_model(model, device=device, weights=weights)
enc = rc.TaskEncodings(loaded, {"train": train_size, "val": val_size, "test": test_size},
                       centering=centering)
ref_units = rc.TaskEncodings(loaded, {"train": reference_size},
                             centering=centering).units(reference, "train")
print(f"model {loaded.name} ({loaded.fingerprint}): {len(ref_units.heads())} heads; "
      f"{len(tasks)} tasks; train/val/test {train_size}/{val_size}/{test_size}; "
      f"reference {ref_units.n_samples}")

# %% [markdown]
# ## Per-task analysis
#
# For every task: zero-shot accuracy; a ridge probe per unit (fitted on train, tested on test);
# each head's alignment with the classifier (the share of its variance inside the span of the
# class directions); mean ablation by layer; and coarse selection with the four rankings of the
# paper, ranked on validation and evaluated on test.

# %%
probes = enc.probes(tasks)  # tasks sharing images are probed together
results = {
    t: al.analyze_task(t, enc.get(t, "train"), enc.get(t, "val"), enc.get(t, "test"),
                       ref_units.mean(), enc.classifier(t), random_seeds=random_seeds,
                       probes=probes[t], ablation_mean=ablation_mean)
    for t in tasks
}
words = rc.load_dictionary(dictionary).embed(loaded)
textspan = spec.explain_heads(ref_units, ref_units.heads().labels, words, n_iters=n_texts,
                              rank=rank, span=span)
shares = spec.family_shares(list(textspan.values()), words, ignore=modifier_families)
families = {t: spec.task_family(t, words.family_names(), task_families) for t in tasks}
table = al.task_table(list(results.values()), shares, families, k_carriers=k_carriers)
write_results(table, results_file, model=loaded.name)

# %% [markdown]
# ## 1. Zero-shot accuracy and its headroom
#
# Bars per task (test split): zero-shot accuracy of the full model, a linear probe on the best
# single head, and a linear probe on the whole embedding. The gap between zero-shot and the
# embedding probe is information the image tower has but the text classifier does not read.

# %% tags=["hide-input"]
ph.plot_headroom(table)
plt.show()

# %% [markdown]
# *The taller the embedding-probe bar above the zero-shot bar, the more the tower knows that the
# classifier does not read.*

# %%
display(styled(table[["task", "K", "chance", "zero_shot", "best_head", "best_head_probe",
                      "embedding_probe", "headroom"]].assign(task=table.task.map(task_label)),
               hide_index=True, integers=("K",)))
means, largest = al.headroom_findings(table)
print(means.to_string(float_format=lambda x: f"{x:.3f}"))
display(styled(largest, precision=2, hide_index=True))

# %% [markdown]
# ## 2a. Which layers' direct effects matter?
#
# Mean-ablate the direct contribution of the heads, the MLPs or both (one panel each) of
# the first $n$ layers and measure zero-shot accuracy on test; thin lines are tasks, the black
# line their mean. TextSpan reported for CLIP ViTs that accuracy survives ablating everything but
# the last ~4 attention layers (of 12–32). The tutorial tower has far fewer layers, so the
# question becomes: how many of its last layers carry the direct effect?
#
# A unit is replaced by its mean over the images being tested (`ablation_mean = "evaluated"`,
# as TextSpan did on ImageNet), which removes what varies from image to image and keeps what
# the images share. On a shifted task the reference set's mean (`"reference"`) would also move
# every embedding by the difference between the two means, a shift rather than a direct
# effect; the last table below puts the heads' mean line under both side by side.

# %%
layers, by_layer = al.ablation_by_layer(results)

# %% tags=["hide-input"]
ph.plot_layer_ablation(layers)
plt.show()

# %% [markdown]
# *Where the black line starts to fall is the first layer whose direct effect the zero-shot
# output needs.*

# %%
display(styled(by_layer))
display(styled(al.spare_layers(by_layer), integers=("spare", "layers")))
display(styled(al.ablation_means_compared(results)))

# %% [markdown]
# ## 2b. Coarse head selection
#
# Keep the top-$k$ heads under a ranking and mean-ablate the others (embedding and MLPs kept):
# **S** greedy selection by validation accuracy, **U|T** the heads whose variance lies most in
# the span of the task's class directions, **U** most along the full output, **R** random (10
# seeds, band from min to max). Rankings and the choice of $k$ use the validation split only.
# Pick a task:

# %% tags=["hide-input"]
cards = {t: ph.plot_task_card(r, chance=1 / r.n_classes) for t, r in results.items()}
display(figure_picker(cards, "Task", default=default_task if default_task in cards else None))

# %% [markdown]
# *A ranking whose curve passes the full model's line at a small $k$ finds a few heads that
# read the task better than all of them together.*

# %% [markdown]
# The table takes, for each task and ranking, the $k$ with the best *validation* accuracy and
# reports its *test* accuracy, next to the full model.

# %%
selection = al.selection_table(results)
display(styled(selection, integers=("S k", "U|T k", "U k")))
display(styled(al.selection_counts(selection), integers=("better", "worse", "tasks")))

# %% [markdown]
# ## 3. Specialisation and zero-shot accuracy across tasks
#
# For each task, "the heads it relies on" are its `k_carriers` best heads by probe. Two task-level
# measures of how well those heads speak to text:
#
# - **specialisation** (`spec_carriers`): the share of those heads' TextSpan explanation
#   credited to the task's family (chapter 03), i.e. how much of what they do is described by
#   texts about this attribute;
# - **alignment** (`align_carriers`): the share of their variance inside the span of the task's
#   class directions, i.e. how much of it the zero-shot classifier can see.
#
# Zero-shot accuracy is compared across tasks with different numbers of classes, so it is
# rescaled to `zs_lift` = (accuracy − 1/K) / (1 − 1/K). With a few dozen tasks only a clear
# correlation can be told apart from chance; the permutation p-value says how strong this one is.
# On the tutorial world we also know the lever the world was built with: how often captions
# mention each attribute (`caption_rate`), a control for the other correlations.

# %%
rates = mention_rates() if model == "tutorial" else {}  # only the tutorial world has captions
table["caption_rate"] = [rates.get(t.split(".")[-1], float("nan")) for t in table.task]
shown = table.assign(task=table.task.str.split(".").str[-1])  # short names; S heads: cards
display(styled(shown[["task", "caption_rate", "zero_shot", "zs_lift", "carriers",
                      "spec_carriers", "align_carriers", "spec_s"]], hide_index=True))
stats = al.correlations(table, ["spec_carriers", "align_carriers", "spec_s", "best_head_probe",
                                "caption_rate"], seed=seed)

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
for ax, col, what in [(axes[0], "spec_carriers", "specialisation of the relied-on heads"),
                      (axes[1], "align_carriers", "alignment of the relied-on heads")]:
    ph.plot_correlation(table, col, "zs_lift", stats=stats.loc[col].to_dict(), ax=ax,
                        xlabel=what, ylabel="zero-shot lift over chance")
plt.show()

# %% [markdown]
# *Points rising to the right: tasks whose relied-on heads speak to text are the ones solved
# zero-shot.*

# %%
clear = table.task[table.zs_lift > 0.1]
print(f"tasks clearly above chance zero-shot (lift > 0.1): {len(clear)} of {len(table)}: "
      f"{', '.join(task_label(t) for t in clear)}")
display(styled(stats, precision=3, integers=("n",)))

# %% [markdown]
# ## What holds here
#
# The paper's points 2 and 3, checked on this run with the criteria the whole book uses
# (`residual_core.analysis.claims`; the book's first page collects every chapter's rows):
#
# - **C9** (only the last attention layers carry the direct effect) is the heads panel of
#   "2a" and the layer table under it: mean-ablating every attention layer but the last third
#   (rounded up) must keep the mean zero-shot accuracy over the tasks within 2 points of the
#   full model's.
# - **C10** (coarse selection helps) is the selection table of "2b": the S ranking, with its
#   k chosen on validation, must beat the full model on test for at least half of the tasks.
# - **C11** (specialisation drives zero-shot accuracy) is the left panel of "3": a positive
#   rank correlation of `spec_carriers` and `zs_lift` over the tasks, significant in a seeded
#   one-sided permutation test (p < 0.05), over at least 30 tasks.

# %%
claims = ca.alignment_claims(layers, selection, table, seed=seed)
ca.write_claims(claims, results_file)
display(claims_view(claims))

# %% [markdown]
# How to read a row that does not hold: a "no" is a measurement of this model on these tasks,
# not a verdict on the paper, which measures CLIP ViTs of 12–32 layers on natural-image
# datasets. With an eight-layer tower, "the last third" is three layers, and C9 then asks
# whether the first five layers' attention can go; the layer table shows how far the accuracy
# moves at each step, i.e. whether C9 fails by a little or by a lot, and a failing row names the
# layer whose ablation costs the most. The last table of 2a gives the same line with the
# reference set's mean, which also takes away the first layers' share of a task's shift: where
# that line falls less, undoing the shift makes up for part of the direct effect that is lost.
# C10 fails where the full model already reads a task well or where the task's information is
# spread over many heads (the task cards of "2b" show the accuracy against k). C11 cannot hold
# on fewer than 30 tasks: the tutorial runs every drawn attribute of every shift (32 tasks); a
# smaller run gives a rank correlation whose sign can be read but not trusted, and its row then
# says that there were too few tasks to decide; the paper profile's ten datasets are not enough
# either, and a run over more tasks is what settles it.

# %% [markdown]
# ## Summary: where the tutorial world agrees with the paper
#
# The tables and lines above are this run's evidence for each point (C9–C11 in the claims
# table above):
#
# - **Headroom** (claim 1): compare the mean zero-shot accuracy with the mean embedding probe;
#   the shifted distributions are where a gap is expected (the attribute is still visible, the
#   look is new), as on the paper's weak zero-shot datasets.
# - **Layers** (claim 2a): the `spare` column of the layer table says how many first layers can be
#   mean-ablated before the mean accuracy moves by more than a point. With an eight-layer
#   tower, "only the last layers matter" can at most mean the last two or three.
# - **Coarse selection** (claim 2b): the S/U|T/U/R counts say on how many tasks keeping a
#   validation-chosen subset of heads beats the full model on test. The paper's finding is
#   that it often does; where it does not here, the full model already reads the task well or
#   the relevant information is spread over many heads.
# - **Specialisation and zero-shot** (claim 3): the correlations and their p-values. A positive,
#   significant rho supports the paper's link; with a few dozen tasks of one small model, a
#   non-significant one is weak evidence either way, not a refutation. Read it together with
#   the count of tasks clearly above chance: when only a few tasks are solved zero-shot at all,
#   the correlation mostly separates those few from the rest (the heads of the solved tasks
#   are described by texts of their family and lie in the classifier's span, the others'
#   are not), which agrees with the paper's link but does not show a graded one.
# - `caption_rate` is the world's design lever in training; on the shifted distributions it is
#   at most a weak control: how far an attribute survives a shift depends more on the shift
#   (a sketch has no colour) than on how often it was captioned.

# %% [markdown]
# ## Exercises
#
# Each changes one parameter; on the smoke preset (three tasks, 100 test images) a run takes
# about a minute, e.g.
# `python -m residual_core.runner run 04_alignment_and_zeroshot --preset smoke --param k_carriers=1`.
#
# **1.** Add the training distribution's `"world2.color"` to `tasks`. Where does it land in
# the headroom figure?
#
# :::{dropdown} Solution
# At the ceiling with no headroom: zero-shot 1.00, embedding probe 1.00, headroom 0.00 (smoke
# preset, next to `clutter.color` at 0.40 zero-shot and 0.23 probe). The tiny CLIP reads
# colour perfectly on the images it was trained on; what chapters 04–05 work on only appears
# under a shift.
# :::
#
# **2.** Set `k_carriers = 1`: each task relies on its single best head. What happens to
# `spec_carriers` and `align_carriers`?
#
# :::{dropdown} Solution
# On the smoke preset both move, `spec_carriers` most (`clutter.color` 0.17 → 0.00,
# `sketch.shape` 0.10 → 0.00, `noise.shape` 0.05 → 0.10): `noise.shape` goes from last to
# first, and the rank correlation with the zero-shot lift goes from −0.50 to +0.87.
# `align_carriers` moves less (`clutter.color` 0.14 → 0.02, `sketch.shape` 0.16 → 0.14,
# `noise.shape` 0.11 → 0.12) but enough to swap two tasks: its rank correlation goes from
# −1.00 to −0.50. With one head, the measures describe that head, not the task, and with
# three tasks a single swap decides the correlation.
# :::
