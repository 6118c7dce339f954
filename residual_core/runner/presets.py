"""Named parameter sets of the chapters (``tutorial``, ``paper``, ``smoke``, ...), sweep grids."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from residual_core.runner.chapters import NOTEBOOKS, ParameterError, RunnerError, list_chapters

__all__ = ["DEFAULT_PROFILE", "PAPER_FAMILIES", "PAPER_TASKS", "RUNS", "SWEEPS", "preset",
           "runs_for"]

DEFAULT_PROFILE = "tutorial"
"""Run name that ``book`` builds by default: small models and data, offline, CPU, minutes."""

PAPER_TASKS = ["cifar10", "cifar100", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "cars",
               "sun397", "svhn"]
"""The paper's ten evaluation datasets (names of :mod:`residual_core.data.paper`)."""

PAPER_FAMILIES = {"cifar10": "object", "cifar100": "object", "dtd": "texture",
                  "eurosat": "scene", "gtsrb": "object", "mnist": "number", "resisc45": "scene",
                  "cars": "object", "sun397": "scene", "svhn": "number"}
"""Family of the ``general`` dictionary each paper dataset's classes belong to."""

_PAPER_TASK_CHAPTER = {
    "model": "openclip_l", "tasks": PAPER_TASKS, "task_families": PAPER_FAMILIES,
    "reference": "imagenet", "dictionary": "general", "modifier_families": [], "device": "cuda",
}
_PAPER_05 = {
    "model": "openclip_l", "tasks": PAPER_TASKS, "reference": "imagenet", "dictionary": "general",
    "default_task": "eurosat", "device": "cuda", "train_size": None, "val_size": None,
    "test_size": None,
    "reference_size": 80000, "lrs": {}, "finetune_epochs": 30, "finetune_train_size": None,
    "stream_units": True, "preload_images": False, "probe_headroom": False, "num_workers": 8,
    "threads": None, "finetune_processes": 0,
}

RUNS: dict[str, dict[str, dict[str, Any]]] = {
    "00_units": {
        "tutorial": {},
        "paper": {"model": "openclip_b", "images_from": "imagenet", "n_images": 64,
                  "dictionary": "general", "device": "cuda"},
        "smoke": {"n_images": 4, "compare_images": 64},
    },
    "01_intrinsic_dimension": {
        "tutorial": {},
        "paper": {"model": "openclip_b", "reference": "imagenet", "size": 80000,
                  "device": "cuda"},
        "smoke": {"size": 200, "twonn_points": 200},
    },
    "02_spectral_geometry": {
        "tutorial": {},
        "paper": {
            "model": "openclip_b", "reference": "imagenet", "reference_size": 80000,
            "datasets": {"imagenet": "imagenet", "sketch": "imagenet_sketch", "pacs": "pacs",
                         "random": "random"},
            "control": "random", "same": ["imagenet"], "split": "val", "size": 10000,
            "device": "cuda",
        },
        "smoke": {"reference_size": 200, "size": 100,
                  "datasets": {"world": "world2.color", "random": "world2_random.color"}},
    },
    "03_head_specialization": {
        "tutorial": {},
        # units of a split are held in RAM here: ViT-L/14, 409 units × 768 × 5k ≈ 6 GB each
        "paper": {**_PAPER_TASK_CHAPTER, "train_size": 5000, "test_size": 5000,
                  "reference_size": 10000},
        "smoke": {"tasks": ["world2.shape", "world2.color"], "train_size": 100, "test_size": 100,
                  "reference_size": 200, "n_texts": 3},
    },
    "04_alignment_and_zeroshot": {
        "tutorial": {},
        "paper": {**_PAPER_TASK_CHAPTER, "train_size": 5000, "val_size": 2000,
                  "test_size": 5000, "reference_size": 10000, "default_task": "eurosat"},
        "smoke": {"tasks": ["world2_clutter.color", "world2_sketch.shape", "world2_noise.shape"],
                  "train_size": 100, "val_size": 60, "test_size": 100, "reference_size": 200,
                  "n_texts": 3, "random_seeds": 2},
    },
    "05_residual": {
        "tutorial": {},
        "paper": _PAPER_05,
        # the paper-profile code path on a stand-in: random clip_l weights, synthetic images
        "standin": {**_PAPER_05, "model": "clip_l", "weights": "random", "tasks": ["synthetic"],
                    "reference": "synthetic", "reference_size": 5000, "train_size": 2000,
                    "val_size": 1000, "test_size": 2000, "finetune_epochs": 2,
                    "default_task": "synthetic"},
        "smoke": {"tasks": ["world2_clutter.color", "world2_sketch.shape"], "train_size": 100,
                  "val_size": 60, "test_size": 100, "reference_size": 200, "max_epochs": 2,
                  "finetune_epochs": 1, "finetune_train_size": 32,
                  "authors_settings": ["residual-full"]},
    },
}
"""Named parameter sets per chapter: ``{stem: {run name: parameter overrides}}``.

A chapter missing here gets a single ``tutorial`` run with its own defaults. The ``tutorial``
profile is what ``make book`` builds (offline, CPU); ``paper`` uses the paper's models and
datasets on a GPU box (``python -m residual_core.runner book --profile paper``); ``standin``
runs chapter 05's paper code path on random weights and the ``synthetic`` dataset; ``smoke`` runs
every chapter's code at tiny sizes (under a minute each on 2 CPU cores: what the notebook tests
run).
"""


SWEEPS: dict[str, dict[str, dict[str, list[Any]]]] = {
    "05_residual": {
        "paper": {
            "model": ["openclip_b", "openclip_l", "clip_b", "clip_l", "vit_l", "dinov2_l",
                      "blip_l_flickr"],
            "tasks": list(PAPER_TASKS),
        },
    },
    "01_intrinsic_dimension": {"paper": {"model": ["openclip_b", "openclip_l", "clip_b",
                                                   "clip_l"]}},
    "02_spectral_geometry": {"paper": {"model": ["openclip_b", "openclip_l", "clip_b",
                                                 "clip_l"]}},
}
"""Default grids per chapter and preset: ``{stem: {preset: {parameter: values}}}``. Chapter 05's
paper grid is every model × every dataset (each job trains every variant)."""


def preset(source: Path, name: str | None) -> dict[str, Any]:
    """The overrides of a chapter's named parameter set (``None``: none, the chapter's defaults).

    Raises:
        ParameterError: Naming the chapter's presets if it has no preset ``name``.
    """
    presets = RUNS.get(source.stem, {DEFAULT_PROFILE: {}})
    if name is None:
        return {}
    if name not in presets:
        raise ParameterError(
            f"{source.stem} has no preset {name!r}; presets: {', '.join(presets)}")
    return dict(presets[name])


def runs_for(profile: str, notebooks: Path = NOTEBOOKS) -> list[tuple[Path, str, dict]]:
    """The (chapter, run, overrides) triples of a profile, in chapter order.

    A chapter not in :data:`RUNS` runs with its defaults under the default profile only.

    Raises:
        RunnerError: If :data:`RUNS` names a chapter that does not exist.
        ParameterError: If no preset of :data:`RUNS` is named ``profile`` (listing them).
    """
    chapters = list_chapters(notebooks)
    stale = sorted(set(RUNS) - {p.stem for p in chapters})
    if stale and notebooks == NOTEBOOKS:
        raise RunnerError(f"RUNS names chapters that do not exist: {stale}")
    profiles = list(dict.fromkeys([DEFAULT_PROFILE, *(r for runs in RUNS.values() for r in runs)]))
    if profile not in profiles:
        close = difflib.get_close_matches(str(profile), profiles, n=1)
        mean = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParameterError(f"no chapter has a run named {profile!r}{mean}; profiles: "
                             f"{', '.join(profiles)}")
    out = []
    for path in chapters:
        runs = RUNS.get(path.stem, {DEFAULT_PROFILE: {}})
        if profile in runs:
            out.append((path, profile, runs[profile]))
    return out
