"""The tutorial world's datasets: every attribute task of every distribution, and the reference.

Each comes with the ground-truth attribute table of every sample (``attributes``).

Tutorial-world names are ``"<distribution>.<task>"``:

- distributions: ``world`` (the training distribution) and its shifted variants playing the
  role of the paper's §3.2 datasets: ``world_noise`` (heavy pixel noise), ``world_palette``
  (another colour palette), ``world_clutter`` (cluttered backgrounds), ``world_sketch``
  (outline drawings, the ImageNet-Sketch analogue) and ``world_random`` (uniform noise images,
  the "random images" set);
- tasks: one per attribute family of ``residual_core.tutorial.world.ATTRIBUTES`` (class names
  are its value words);
- plus ``world.reference``, the ImageNet analogue used for PCA bases: larger, drawn from the
  base distribution with its own seeds, labelled by the object's ``"<color> <shape>"``
  (30 classes).

Those are the v1 world's (``residual_core.tutorial.world.DEFAULT_WORLD``, the earlier 4-layer
model's). The v2 world (``NUISANCE_WORLD``: caption-free continuous nuisance and a ``dark``
shift; the shipped checkpoint's, and every chapter's) has the same tasks under the
distributions of ``NUISANCE_DISTRIBUTIONS``, ``world2`` and ``world2_<shift>``, and its
reference ``world2.reference``; the v3 world (``PATTERN_WORLD``: v2 with pattern backgrounds)
the same under ``world3``, ``world3_<shift>`` and ``world3.reference``, with its own background
class names (:func:`distributions`, :func:`reference_name` and :func:`downstream_tasks` take
the world's name, ``v1``, ``v2`` or ``v3``; :func:`world_of` names the world of a dataset).

All tasks of one distribution and split share the same images (generated once, cached in
memory), so one forward pass serves every attribute. Splits ``train``/``val``/``test`` come from
disjoint seed streams; images are generated in blocks of ``BLOCK`` scenes, each from its own
seed, so a smaller ``size`` is a prefix of a larger one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from residual_core.data.base import SPLITS, ClassificationDataset, DatasetSpec
from residual_core.tutorial import world as W

__all__ = [
    "BLOCK",
    "DISTRIBUTIONS",
    "NUISANCE_DISTRIBUTIONS",
    "PATTERN_DISTRIBUTIONS",
    "REFERENCE_SIZES",
    "SPLIT_SIZES",
    "WORLD_SEED",
    "clear",
    "distributions",
    "downstream_tasks",
    "image_set",
    "reference_name",
    "specs",
    "world_of",
    "world_split",
]

SPLIT_SIZES = {"train": 2000, "val": 1000, "test": 2000}
"""Default number of samples per split of a tutorial-world task."""
REFERENCE_SIZES = {"train": 5000, "val": 1000, "test": 1000}
"""Default number of samples per split of ``world.reference``."""
WORLD_SEED = 0
BLOCK = 500
DISTRIBUTIONS: dict[str, str | None] = {
    "world": None,
    **{f"world_{shift}": shift for shift in W.SHIFTS},
}
"""Tutorial distribution name → ``world`` shift (``None`` is the base world), v1 world."""
NUISANCE_DISTRIBUTIONS: dict[str, str | None] = {
    "world2": None,
    **{f"world2_{shift}": shift for shift in W.NUISANCE_SHIFTS},
}
"""The same for the v2 world (``NUISANCE_WORLD``)."""
PATTERN_DISTRIBUTIONS: dict[str, str | None] = {
    "world3": None,
    **{f"world3_{shift}": shift for shift in W.NUISANCE_SHIFTS},
}
"""The same for the v3 world (``PATTERN_WORLD``: pattern backgrounds)."""
_BY_WORLD = {"v1": DISTRIBUTIONS, "v2": NUISANCE_DISTRIBUTIONS, "v3": PATTERN_DISTRIBUTIONS}
_SHIFT_OF = {d: shift for dists in _BY_WORLD.values() for d, shift in dists.items()}
# world_split's names of the references
_REFERENCES = {"v1": "reference", "v2": "reference2", "v3": "reference3"}
_WORLD_OF = {**{d: w for w, dists in _BY_WORLD.items() for d in dists},
             **{r: w for w, r in _REFERENCES.items()}}


def distributions(world: str = "v1") -> dict[str, str | None]:
    """The distributions of a named world → their shift.

    ``v1``: :data:`DISTRIBUTIONS`, ``v2``: :data:`NUISANCE_DISTRIBUTIONS`, ``v3``:
    :data:`PATTERN_DISTRIBUTIONS`.
    """
    W.world_config(world)
    return _BY_WORLD[world]


def world_of(dataset: str) -> str:
    """The named world (``v1``/``v2``/``v3``) of a tutorial dataset: ``world2_dark.color``: ``v2``.

    Raises:
        ValueError: ``dataset`` is not a tutorial-world dataset (the valid prefixes are named).
    """
    for world in _REFERENCES:
        if dataset == reference_name(world):
            return world
    distribution = dataset.partition(".")[0]
    if distribution not in _WORLD_OF or distribution in _REFERENCES.values():
        raise ValueError(f"{dataset!r} is not a tutorial-world dataset; valid distributions: "
                         f"{', '.join(_SHIFT_OF)}")
    return _WORLD_OF[distribution]


def image_set(dataset: str) -> str:
    """The name under which a dataset's images are encoded (one store for every task).

    Every task of one tutorial distribution shows the same images, so all of them share the
    store of ``<distribution>.<first attribute>`` (``world_palette.color`` →
    ``world_palette.shape``), whichever task or chapter asks first. Any other name, the
    references included, is its own.
    """
    distribution, _, task = dataset.partition(".")
    if task in W.ATTRIBUTES and distribution in _SHIFT_OF:
        return f"{distribution}.{next(iter(W.ATTRIBUTES))}"
    return dataset


def reference_name(world: str = "v1") -> str:
    """The registered name of a world's reference set: ``world.reference``, ``world2...``."""
    W.world_config(world)
    return {"v1": "world.reference", "v2": "world2.reference", "v3": "world3.reference"}[world]


def downstream_tasks(world: str = "v1") -> list[str]:
    """Every attribute task of every natural shifted distribution that draws the attribute.

    The tutorial's analogue of the paper's downstream datasets: shifted distributions the
    tiny CLIP never saw in training. Random images carry no attributes and are left out, and
    so are the attributes a shift does not draw (``world.HIDDEN_BY_SHIFT``). 25 tasks in v1,
    32 in v2 (its ``dark`` shift).
    """
    return [f"{dist}.{task}" for dist, shift in distributions(world).items()
            if shift not in (None, "random") for task in W.ATTRIBUTES
            if task not in W.HIDDEN_BY_SHIFT.get(shift, ())]


_WORLD_CACHE: dict[tuple[str, str, int], tuple[W.Scenes, np.ndarray]] = {}


def _split_seeds(distribution: str, split: str, block: int) -> tuple[int, int]:
    tag = zlib.crc32(distribution.encode())
    state = np.random.SeedSequence([WORLD_SEED, tag, SPLITS.index(split), block]).generate_state(2)
    return int(state[0]), int(state[1])


def world_split(
    distribution: str, split: str, size: int, config: W.WorldConfig | None = None
) -> tuple[W.Scenes, np.ndarray]:
    """The scenes and uint8 images of one tutorial distribution split (cached).

    Args:
        distribution: ``world``, a shifted ``world_<shift>``, or ``reference`` (v1);
            ``world2``, ``world2_<shift>`` or ``reference2`` (v2); the same with 3 (v3).
        split: ``train``, ``val`` or ``test``.
        size: Number of samples.
        config: The world (default: the distribution's; only that one is cached).

    Returns:
        ``(scenes, images)`` with images of shape (size, 64, 64, 3).
    """
    own = W.WORLDS[_WORLD_OF[distribution]]
    config = own if config is None else config
    shift = _SHIFT_OF.get(distribution)
    key = (distribution, split, size)
    if config is own and key in _WORLD_CACHE:
        return _WORLD_CACHE[key]
    scenes, images = [], []
    for b in range(-(-size // BLOCK)):
        n = min(BLOCK, size - b * BLOCK)
        scene_seed, render_seed = _split_seeds(distribution, split, b)
        s = W.sample_scenes(BLOCK, scene_seed, config, shift)
        scenes.append(s.subset(slice(0, n)))
        images.append(W.render(s, render_seed)[:n])  # whole blocks: a prefix stays a prefix
    out = (W.Scenes.concatenate(scenes), np.concatenate(images))
    if config is own:
        _WORLD_CACHE[key] = out
    return out


def _world_builder(
    distribution: str, task: str
) -> Callable[[str, int | None], ClassificationDataset]:
    def build(split: str, size: int | None) -> ClassificationDataset:
        scenes, images = world_split(distribution, split, size or SPLIT_SIZES[split])
        attributes = scenes.attributes()
        return ClassificationDataset(
            name=f"{distribution}.{task}",
            split=split,
            images=images,
            labels=attributes[task],
            classnames=W.world_config(_WORLD_OF[distribution]).attributes[task],
            templates=W.TEMPLATES[task],
            attributes=attributes,
            scenes=scenes,
        )

    return build


def _reference_builder(world: str) -> Callable[[str, int | None], ClassificationDataset]:
    def build(split: str, size: int | None) -> ClassificationDataset:
        return _build_reference(split, size, world)

    return build


def _build_reference(split: str, size: int | None, world: str = "v1") -> ClassificationDataset:
    scenes, images = world_split(_REFERENCES[world], split, size or REFERENCE_SIZES[split])
    attributes = scenes.attributes()
    colors, shapes = W.ATTRIBUTES["color"], W.ATTRIBUTES["shape"]
    classnames = [f"{c} {s}" for c in colors for s in shapes]
    labels = attributes["color"] * len(shapes) + attributes["shape"]
    return ClassificationDataset(
        name=reference_name(world),
        split=split,
        images=images,
        labels=labels,
        classnames=classnames,
        templates=W.TEMPLATES["reference"],
        attributes=attributes,
        scenes=scenes,
    )


def specs() -> list[DatasetSpec]:
    """Every tutorial-world dataset: ``<distribution>.<task>`` for each task, and the reference."""
    out = []
    for world, version in (("v1", ""), ("v2", " v2"), ("v3", " v3")):
        for distribution, shift in distributions(world).items():
            what = (f"base tutorial world{version}" if shift is None
                    else f"tutorial world{version}, {shift} shift")
            for task in W.ATTRIBUTES:
                out.append(DatasetSpec(name=f"{distribution}.{task}",
                                       build=_world_builder(distribution, task),
                                       description=f"{task} ({what})"))
        out.append(DatasetSpec(
            name=reference_name(world), build=_reference_builder(world),
            description=f"reference set for PCA bases (ImageNet analogue{version}): color+shape",
        ))
    return out


def clear() -> None:
    """Forget every rendered world split."""
    _WORLD_CACHE.clear()
