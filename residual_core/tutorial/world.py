"""A procedural image–caption world: one textured object, a background and a row of stars.

Every 64×64 RGB image shows one object with a shape, a colour, a size, a texture and a
horizontal position (left, center or right of the image); a background colour; and a row of
one to four small stars in the bottom 8 pixel rows. Objects sit on the 8-pixel patch grid
(centres on patch corners, no size jitter; the vertical position is a nuisance drawn from four
grid rows): a 4-layer ViT trained from scratch on a CPU learns shapes several times faster when
a shape always cuts the same patch pattern. All attributes are visible at 8×8-patch resolution.

Why one object: an earlier version of this world drew two objects and asked for the attributes
of the left or right one. A tiny CLIP trained on it knew *which* colours and shapes were in the
image but not *where* (the binding problem real CLIPs also have; Yuksekgonul et al. 2023), so
most per-side tasks stayed near chance zero-shot while linear probes read them. With one object
every task measures alignment, not binding.

Captions are templated and mention each attribute only with a configured probability
(``WorldConfig.mention``). That is the lever that sets how well contrastive training aligns the
text side with each attribute: frequently captioned attributes are easy zero-shot tasks; rarely
captioned ones stay visible to the image tower but weakly aligned, the analogue of the paper's
weak zero-shot datasets. Defaults:

==============  ===========  =============================================================
family          P(mention)   role
==============  ===========  =============================================================
shape           0.80         easy: frequently captioned
color           0.60         easy
size            0.50         medium
texture         0.40         visible, less often captioned
position        0.40         spatial (left / center / right), less often captioned
background      0.40         scene-level, medium
count (stars)   0.30         counting, rarely captioned
==============  ===========  =============================================================

Everything is deterministic from integer seeds: ``sample_scenes`` draws the attribute table and
geometry, ``render`` draws pixels (noise, jitter), ``captions`` draws which attributes are said.
Rendering is vectorised over the batch in numpy (see ``benchmarks/world_throughput.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ATTRIBUTES",
    "DEFAULT_WORLD",
    "IMAGE_SIZE",
    "PREFIXES",
    "SHIFTS",
    "TEMPLATES",
    "Scenes",
    "WorldConfig",
    "attribute_table",
    "caption_stream",
    "captions",
    "max_caption_words",
    "mention_rates",
    "render",
    "sample_scenes",
    "vocabulary",
]

IMAGE_SIZE = 64
_STRIP_TOP = 56  # rows [56, 64) hold the stars; the object lives in rows [0, 56)
_STAR_SLOTS = 8  # one star slot per 8-pixel column
SHIFTS = ("noise", "palette", "clutter", "sketch", "random")
"""Distribution shifts understood by ``sample_scenes``/``render`` (``None`` is the base world).

- ``noise``: strong pixel noise (std ``WorldConfig.shift_noise_std``).
- ``palette``: another RGB palette for objects and backgrounds, with stronger colour jitter.
- ``clutter``: random 8×8-pixel colour blocks, half-blended with the plain background.
- ``sketch``: black outlines of the object and stars on a white page (no colour, no texture).
- ``random``: uniform noise images; the attribute table is sampled but not drawn.
"""

PREFIXES = ("", "a photo of ", "a picture of ")
"""Caption openings (uniform): captions read like the zero-shot prompts some of the time."""

_DEFAULT_MENTION = {
    "shape": 0.8,
    "color": 0.6,
    "size": 0.5,
    "texture": 0.4,
    "position": 0.4,
    "background": 0.4,
    "count": 0.3,
}
_OBJECT_FAMILIES = ("shape", "color", "size", "texture", "position")


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines the world: vocabularies, geometry, palettes, caption statistics.

    Attribute values are sampled uniformly. ``mention`` holds, per attribute family, the
    probability that a caption mentions it.

    Attributes:
        shapes: Shape words.
        colors: Object colour words, aligned with ``palette``.
        sizes: Size words, aligned with ``radii``.
        textures: Texture words (``plain`` first).
        positions: Horizontal position words, aligned with ``x_centres``.
        backgrounds: Background colour words, aligned with ``background_palette``.
        counts: Star-count words for 1, 2, ... stars.
        palette: RGB of each object colour.
        background_palette: RGB of each background.
        radii: Half-extent in pixels of each size class (before ±``radius_jitter``).
        x_centres: Horizontal centre in pixels of each position.
        radius_jitter: Integer jitter of the radius.
        x_jitter: Horizontal jitter of the object's centre around its position's centre.
        y_rows: Vertical centres the object is drawn at (uniform; a nuisance, not a task).
        color_jitter: Uniform per-object jitter of each RGB channel.
        texture_shade: Brightness factor of the texture's dark pixels.
        noise_std: Standard deviation of the (uniform, per channel) pixel noise of the base world.
        shift_noise_std: Standard deviation of the pixel noise of the ``noise`` shift.
        shift_palette: RGB of each object colour under the ``palette`` shift.
        shift_background_palette: RGB of each background under the ``palette`` shift.
        shift_color_jitter: Colour jitter under the ``palette`` shift.
        caption_error: Probability that a mentioned value is replaced by a wrong one.
        mention: Per-attribute mention probability (a mapping; stored as sorted pairs).
    """

    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    sizes: tuple[str, ...] = ("small", "medium", "large")
    textures: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")
    positions: tuple[str, ...] = ("left", "center", "right")
    backgrounds: tuple[str, ...] = ("black", "gray", "brown", "navy")
    counts: tuple[str, ...] = ("one", "two", "three", "four")
    palette: tuple[tuple[int, int, int], ...] = (
        (220, 40, 40),
        (40, 175, 60),
        (50, 90, 235),
        (235, 215, 40),
        (155, 60, 205),
        (245, 135, 25),
    )
    background_palette: tuple[tuple[int, int, int], ...] = (
        (15, 15, 15),
        (100, 100, 100),
        (90, 55, 25),
        (20, 30, 85),
    )
    radii: tuple[int, ...] = (6, 9, 12)
    x_centres: tuple[int, ...] = (16, 32, 48)
    radius_jitter: int = 0
    x_jitter: int = 0
    y_rows: tuple[int, ...] = (16, 24, 32, 40)
    color_jitter: int = 15
    texture_shade: float = 0.3
    noise_std: float = 6.0
    shift_noise_std: float = 45.0
    shift_palette: tuple[tuple[int, int, int], ...] = (
        (200, 70, 120),
        (120, 200, 40),
        (40, 160, 220),
        (225, 235, 120),
        (105, 45, 150),
        (225, 95, 70),
    )
    shift_background_palette: tuple[tuple[int, int, int], ...] = (
        (55, 50, 70),
        (150, 150, 140),
        (130, 100, 60),
        (40, 70, 120),
    )
    shift_color_jitter: int = 35
    caption_error: float = 0.0
    mention: Mapping[str, float] | tuple[tuple[str, float], ...] = field(
        default_factory=lambda: tuple(sorted(_DEFAULT_MENTION.items()))
    )

    def __post_init__(self) -> None:
        pairs = self.mention.items() if isinstance(self.mention, Mapping) else self.mention
        pairs = tuple(sorted((str(k), float(v)) for k, v in pairs))
        object.__setattr__(self, "mention", pairs)
        known = set(self.attributes)
        unknown = {k for k, _ in pairs} - known
        if unknown:
            raise ValueError(
                f"unknown attributes in mention: {sorted(unknown)}; valid: {sorted(known)}"
            )
        missing = known - {k for k, _ in pairs}
        if missing:
            raise ValueError(f"mention lacks attributes {sorted(missing)}")
        if len(self.palette) != len(self.colors) or len(self.shift_palette) != len(self.colors):
            raise ValueError("palette sizes must match colors")
        if len(self.background_palette) != len(self.backgrounds):
            raise ValueError("background_palette must match backgrounds")
        if len(self.shift_background_palette) != len(self.backgrounds):
            raise ValueError("shift_background_palette must match backgrounds")
        if len(self.shapes) != 5 or len(self.textures) != 4:
            raise ValueError("the renderer draws exactly 5 shapes and 4 textures (in this order)")
        if len(self.radii) != len(self.sizes):
            raise ValueError("radii must match sizes")
        if len(self.x_centres) != len(self.positions):
            raise ValueError("x_centres must match positions")
        if len(self.counts) > _STAR_SLOTS:
            raise ValueError(f"at most {_STAR_SLOTS} star counts")
        reach = max(self.radii) + self.radius_jitter
        if min(self.y_rows) - reach < 0 or max(self.y_rows) + reach >= _STRIP_TOP:
            raise ValueError(f"y_rows {self.y_rows} put objects outside rows [0, {_STRIP_TOP})")

    @property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        """Attribute family → value words, in a fixed order (object, then scene)."""
        return {
            "shape": self.shapes,
            "color": self.colors,
            "size": self.sizes,
            "texture": self.textures,
            "position": self.positions,
            "background": self.backgrounds,
            "count": self.counts,
        }

    def mention_prob(self, attribute: str) -> float:
        """The configured mention probability of one attribute family."""
        return dict(self.mention)[attribute]

    def replace(self, **changes: object) -> WorldConfig:
        """A copy with some fields changed (``mention`` may be a partial mapping)."""
        if "mention" in changes and isinstance(changes["mention"], Mapping):
            changes["mention"] = {**dict(self.mention), **changes["mention"]}
        return dataclasses.replace(self, **changes)


DEFAULT_WORLD = WorldConfig()
ATTRIBUTES: dict[str, tuple[str, ...]] = DEFAULT_WORLD.attributes
"""Attribute family → value words of the default world (class names of the tasks)."""

_OBJ_TPL = ("a {} object", "a photo of a {} object", "a picture of a {} object")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a {}", "a photo of a {}", "a picture of a {}"),
    "color": _OBJ_TPL,
    "size": _OBJ_TPL,
    "texture": _OBJ_TPL,
    "position": (
        "a object at the {}",
        "a photo of a object at the {}",
        "a picture of a object at the {}",
    ),
    "background": (
        "a photo on a {} background",
        "a object on a {} background",
        "a picture on a {} background",
    ),
    "count": ("a photo with {} stars", "a picture with {} stars", "a object with {} stars"),
    # Reference task (the ImageNet analogue): class names are "<color> <shape>".
    "reference": ("a {}", "a photo of a {}", "a picture of a {}"),
}
"""Zero-shot prompt templates per task (lowercase vocabulary words, no punctuation; the
captions say "a" before every noun, so the prompts do too)."""


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes: one int array per attribute family plus the geometry to draw them.

    Attribute arrays hold value indices into ``config.attributes[family]``; ``count`` index ``k``
    means ``k + 1`` stars. Geometry arrays are in pixels. Use ``attributes()`` for the label
    table and ``words(family)`` for value words.
    """

    shape: np.ndarray
    color: np.ndarray
    size: np.ndarray
    texture: np.ndarray
    position: np.ndarray
    background: np.ndarray
    count: np.ndarray
    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    phase: np.ndarray
    """(n,) texture phase of the object."""
    star_slots: np.ndarray
    """(n, 8) bool: which bottom-strip slots hold a star."""
    shift: str | None = None
    config: WorldConfig = DEFAULT_WORLD

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def attributes(self) -> dict[str, np.ndarray]:
        """Attribute family → (n,) int64 value indices, in ``config.attributes`` order."""
        return {a: getattr(self, a) for a in self.config.attributes}

    def words(self, attribute: str) -> list[str]:
        """The value word of ``attribute`` for every scene."""
        vocab = self.config.attributes[attribute]
        return [vocab[i] for i in getattr(self, attribute)]

    def subset(self, index: np.ndarray | slice) -> Scenes:
        """The scenes selected by ``index`` (same shift and config)."""
        arrays = {
            f.name: getattr(self, f.name)[index]
            for f in dataclasses.fields(self)
            if f.name not in ("shift", "config")
        }
        return Scenes(**arrays, shift=self.shift, config=self.config)

    def keys(self) -> np.ndarray:
        """(n, k) int64 rows that identify each scene (attributes and geometry)."""
        cols = [
            getattr(self, f.name).reshape(len(self), -1).astype(np.int64)
            for f in dataclasses.fields(self)
            if f.name not in ("shift", "config")
        ]
        return np.concatenate(cols, axis=1)


def _check_shift(shift: str | None) -> None:
    if shift is not None and shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; valid: None, {', '.join(SHIFTS)}")


def sample_scenes(
    n: int, seed: int, config: WorldConfig = DEFAULT_WORLD, shift: str | None = None
) -> Scenes:
    """Sample ``n`` scenes: uniform attribute values and geometry.

    Args:
        n: Number of scenes.
        seed: Seed of the scene generator (independent of the render and caption seeds).
        config: The world.
        shift: ``None`` for the base world or one of ``SHIFTS`` (recorded, used by ``render``).

    Returns:
        The scenes.
    """
    _check_shift(shift)
    rng = np.random.default_rng([seed, 0x5CE7E])
    attrs = {a: rng.integers(0, len(v), n) for a, v in config.attributes.items()}
    j = config.radius_jitter
    r = np.asarray(config.radii)[attrs["size"]] + rng.integers(-j, j + 1, n)
    x = np.asarray(config.x_centres)[attrs["position"]]
    x = x + rng.integers(-config.x_jitter, config.x_jitter + 1, n)
    y = np.asarray(config.y_rows)[rng.integers(0, len(config.y_rows), n)]
    phase = rng.integers(0, 8, n)
    order = np.argsort(rng.random((n, _STAR_SLOTS)), axis=1)
    ranks = np.argsort(order, axis=1)
    star_slots = ranks <= attrs["count"][:, None]
    return Scenes(**attrs, x=x, y=y, r=r, phase=phase, star_slots=star_slots, shift=shift,
                  config=config)


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _shape_mask(shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(n, H, W) bool mask of each object; shape indices follow ``WorldConfig.shapes`` order.

    Every shape stays within ``|dx| <= r`` and ``|dy| <= r`` of its centre.
    """
    n = shape.shape[0]
    mask = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for s in range(5):
        sel = np.flatnonzero(shape == s)
        if sel.size == 0:
            continue
        dx = np.abs(_XX[None] - cx[sel, None, None].astype(np.float32))
        dy = _YY[None] - cy[sel, None, None].astype(np.float32)
        rr = r[sel, None, None].astype(np.float32)
        if s == 0:  # circle
            m = dx * dx + dy * dy <= rr * rr + rr * 0.5
        elif s == 1:  # square
            m = (dx <= 0.85 * rr) & (np.abs(dy) <= 0.85 * rr)
        elif s == 2:  # triangle, apex up
            m = (dy >= -rr) & (dy <= rr) & (dx <= (dy + rr) * 0.5)
        elif s == 3:  # diamond
            m = dx + np.abs(dy) <= rr + 0.5
        else:  # cross
            arm = np.maximum(rr / 3.0, 1.5)
            ady = np.abs(dy)
            m = ((dx <= arm) & (ady <= rr)) | ((ady <= arm) & (dx <= rr))
        mask[sel] = m
    return mask


_TEXTURE_PERIOD = 8  # texture phases; every pattern below repeats within 8 pixels


def _texture_table() -> np.ndarray:
    """(4 textures, 8 phases, H, W) bool table of dark texture pixels."""
    phase = np.arange(_TEXTURE_PERIOD)[:, None, None]
    xx = _XX.astype(np.int32)[None] + phase
    yy = _YY.astype(np.int32)[None] + phase
    plain = np.zeros_like(xx, dtype=bool)
    striped = ((xx + yy) % 8) < 4
    checkered = (((xx // 4) + (yy // 4)) % 2) == 0
    dx, dy = xx % 5 - 2, yy % 5 - 2
    dotted = dx * dx + dy * dy <= 1
    return np.stack([plain, striped, checkered, dotted])


_TEXTURES = _texture_table()


def _texture_mask(texture: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """(n, H, W) bool mask of the dark texture pixels (plain, striped, checkered, dotted)."""
    return _TEXTURES[texture, phase % _TEXTURE_PERIOD]


def _star_mask(star_slots: np.ndarray) -> np.ndarray:
    """(n, H, W) bool mask of the stars: a 5-pixel plus sign centred in each occupied slot."""
    cx = np.arange(_STAR_SLOTS) * (IMAGE_SIZE // _STAR_SLOTS) + IMAGE_SIZE // _STAR_SLOTS // 2
    cy = _STRIP_TOP + 4
    dx = np.abs(_XX[None] - cx[:, None, None])
    dy = np.abs(_YY[None] - cy)
    plus = ((dx <= 2) & (dy < 1)) | ((dy <= 2) & (dx < 1)) | ((dx <= 1) & (dy <= 1))
    flat = plus.reshape(_STAR_SLOTS, -1).astype(np.float32)
    hits = star_slots.astype(np.float32) @ flat
    return (hits > 0).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[:, 1:, :] &= mask[:, :-1, :]
    inner[:, :-1, :] &= mask[:, 1:, :]
    inner[:, :, 1:] &= mask[:, :, :-1]
    inner[:, :, :-1] &= mask[:, :, 1:]
    return mask & ~inner


_BLOCK_MAP = ((_YY // 8) * 8 + _XX // 8).astype(np.uint8)  # 8×8-pixel block id of each pixel


def _render_chunk(scenes: Scenes, rng: np.random.Generator) -> np.ndarray:
    """Draw a chunk through a per-pixel label map and a per-image colour table.

    Labels: 0 background, 1/2 object light/dark (texture), 3 star, 4 + b the clutter block b.
    One gather turns labels into colours; noise is added last.
    """
    cfg, shift, n = scenes.config, scenes.shift, len(scenes)
    shape4 = (n, IMAGE_SIZE, IMAGE_SIZE, 3)
    if shift == "random":
        return rng.integers(0, 256, shape4, dtype=np.uint8)
    sketch = shift == "sketch"
    palette = np.asarray(cfg.shift_palette if shift == "palette" else cfg.palette, np.float32)
    bg_pal = np.asarray(
        cfg.shift_background_palette if shift == "palette" else cfg.background_palette, np.float32
    )
    jitter = cfg.shift_color_jitter if shift == "palette" else cfg.color_jitter
    table = np.zeros((n, 4 + 64 * (shift == "clutter"), 3), np.float32)
    if sketch:
        table[:, 0], table[:, 1:] = 235.0, 20.0
    else:
        table[:, 0] = bg_pal[scenes.background] + rng.uniform(-8, 8, (n, 1)).astype(np.float32)
        table[:, 3] = 240.0
    if shift == "clutter":  # 8×8-pixel blocks of random colour, half-blended with the background
        blocks = rng.integers(0, 256, (n, 64, 3)).astype(np.float32)
        table[:, 4:] = 0.5 * blocks + 0.5 * table[:, :1]
        labels = np.broadcast_to(_BLOCK_MAP + np.uint8(4), (n, IMAGE_SIZE, IMAGE_SIZE)).copy()
    else:
        labels = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    mask = _shape_mask(scenes.shape, scenes.x, scenes.y, scenes.r)
    if sketch:
        labels[_outline(mask)] = 1
    else:
        color = palette[scenes.color] + rng.uniform(-jitter, jitter, (n, 3)).astype(np.float32)
        table[:, 1] = color
        table[:, 2] = color * np.float32(cfg.texture_shade)
        pattern = _texture_mask(scenes.texture, scenes.phase)
        labels = np.where(mask, pattern.view(np.uint8) + np.uint8(1), labels)
    labels[_star_mask(scenes.star_slots)] = 3
    table = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    flat = labels.astype(np.intp) + (np.arange(n) * table.shape[1])[:, None, None]
    img = table.reshape(-1, 3)[flat]
    std = cfg.shift_noise_std if shift == "noise" else cfg.noise_std
    half_width = int(round(std * np.sqrt(3.0)))  # uniform noise with standard deviation ≈ std
    if half_width <= 0:
        return img
    noisy = rng.integers(-half_width, half_width + 1, shape4, dtype=np.int16)
    noisy += img
    np.clip(noisy, 0, 255, out=noisy)
    return noisy.astype(np.uint8)


_CHUNK = 256  # scenes drawn per vectorised step, each step with its own seed


def render(scenes: Scenes, seed: int) -> np.ndarray:
    """Draw the scenes.

    Scenes are drawn in chunks of 256, chunk ``c`` from seed ``(seed, c)``, so the first
    ``256·k`` images do not depend on how many scenes follow.

    Args:
        scenes: Scenes from ``sample_scenes`` (their ``shift`` selects the rendering variant).
        seed: Seed of the pixel noise, colour jitter and clutter.

    Returns:
        uint8 array (n, 64, 64, 3).
    """
    n = len(scenes)
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for c, start in enumerate(range(0, n, _CHUNK)):
        rng = np.random.default_rng([seed, 0x9E7D, c])
        sl = slice(start, min(start + _CHUNK, n))
        out[sl] = _render_chunk(scenes.subset(sl), rng)
    return out


def mention_rates(config: WorldConfig = DEFAULT_WORLD) -> dict[str, float]:
    """Per-caption probability that each attribute family is mentioned (before any error)."""
    return {attr: config.mention_prob(attr) for attr in config.attributes}


def captions(
    scenes: Scenes,
    seed: int,
    config: WorldConfig | None = None,
    return_mentions: bool = False,
) -> list[str] | tuple[list[str], dict[str, np.ndarray]]:
    """Templated captions that mention a random subset of each scene's attributes.

    Grammar: an opening from ``PREFIXES``, the object phrase ``a [size] [texture] [color]
    <shape|object>``, then optionally ``at the <position>``, ``on a <bg> background`` and
    ``with <count> star(s)``. Words are lowercase vocabulary words separated by single spaces,
    no punctuation.

    Args:
        scenes: The scenes.
        seed: Seed of the caption choices.
        config: Caption statistics; defaults to the scenes' config.
        return_mentions: Also return, per attribute family, a bool array of which captions
            mention it.

    Returns:
        The captions, and the mention table if ``return_mentions``.
    """
    cfg = config if config is not None else scenes.config
    vocab = cfg.attributes
    n = len(scenes)
    rng = np.random.default_rng([seed, 0xCA9])
    mentions = {attr: rng.random(n) < cfg.mention_prob(attr) for attr in cfg.attributes}
    prefix = rng.integers(0, len(PREFIXES), n)
    values = {a: getattr(scenes, a).copy() for a in cfg.attributes}
    if cfg.caption_error > 0:
        for a, v in values.items():
            wrong = rng.random(n) < cfg.caption_error
            shift = rng.integers(1, len(vocab[a]), n)
            v[wrong] = (v[wrong] + shift[wrong]) % len(vocab[a])
    words = {a: np.asarray(vocab[a], dtype=object)[values[a]] for a in cfg.attributes}

    out = []
    for i in range(n):
        parts = [PREFIXES[prefix[i]] + "a"]
        for a in ("size", "texture", "color"):
            if mentions[a][i]:
                parts.append(words[a][i])
        parts.append(words["shape"][i] if mentions["shape"][i] else "object")
        if mentions["position"][i]:
            parts.append(f"at the {words['position'][i]}")
        if mentions["background"][i]:
            parts.append(f"on a {words['background'][i]} background")
        if mentions["count"][i]:
            noun = "star" if values["count"][i] == 0 else "stars"
            parts.append(f"with {words['count'][i]} {noun}")
        out.append(" ".join(parts))
    if return_mentions:
        return out, mentions
    return out


def attribute_table(config: WorldConfig = DEFAULT_WORLD) -> list[dict[str, object]]:
    """One row per attribute family: values, chance level and caption statistics.

    Rows hold ``attribute``, ``values`` (the class names), ``classes``, ``chance`` (1/K),
    ``p_mention`` and ``caption_rate`` (both the per-caption mention probability; two names
    kept for the tables of earlier versions), for model cards and chapter tables.
    """
    rates = mention_rates(config)
    return [
        {
            "attribute": attr,
            "values": values,
            "classes": len(values),
            "chance": 1.0 / len(values),
            "p_mention": config.mention_prob(attr),
            "caption_rate": rates[attr],
        }
        for attr, values in config.attributes.items()
    ]


def max_caption_words(config: WorldConfig = DEFAULT_WORLD) -> int:
    """Longest possible caption in words (for the text tower's context length)."""
    opening = max(len(p.split()) for p in PREFIXES)
    return opening + 5 + 3 + 4 + 3  # a size texture color shape, position, background, count


def vocabulary(config: WorldConfig = DEFAULT_WORLD) -> list[str]:
    """Every word a caption, class name or prompt template can contain (sorted, unique)."""
    words = {"a", "at", "the", "on", "object", "background", "with", "star", "stars"}
    for p in PREFIXES:
        words.update(p.split())
    for values in config.attributes.values():
        for v in values:
            words.update(v.split())
    for templates in TEMPLATES.values():
        for t in templates:
            words.update(t.replace("{}", " ").split())
    return sorted(words)


def caption_stream(
    batch_size: int,
    seed: int,
    config: WorldConfig = DEFAULT_WORLD,
    shift: str | None = None,
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless training batches of (uint8 images (batch, 64, 64, 3), captions).

    Batch ``i`` is a deterministic function of ``(seed, i)``, so a stream can be resumed.

    Args:
        batch_size: Images per batch.
        seed: Stream seed.
        config: The world.
        shift: Optional distribution shift.

    Yields:
        (images, captions) per batch.
    """
    step = 0
    while True:
        base = np.random.SeedSequence([seed, step, 0x57E4]).generate_state(3)
        scenes = sample_scenes(batch_size, int(base[0]), config, shift)
        yield render(scenes, int(base[1])), captions(scenes, int(base[2]), config)
        step += 1
