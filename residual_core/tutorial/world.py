"""A procedural image–caption world: two textured objects, a background and a row of stars.

Every 64×64 RGB image shows two objects, one in the left half and one in the right half, each
with a shape, a colour, a size and a texture; a background colour; a row of one to four small
stars in the bottom 8 pixel rows; and a vertical relation (the left object is *higher* than,
*lower* than or *level* with the right one). Objects sit on the 8-pixel patch grid (centres on
patch corners, sizes without jitter): a 4-layer ViT trained from scratch on a CPU learns shapes
several times faster when a shape always cuts the same patch pattern. All attributes are
visible at 8×8-patch resolution. Eleven attribute families, eight of them bound to an object,
are more than a 4-head tower can carry redundantly.

Captions are templated and mention each attribute only with a configured probability
(``WorldConfig.mention``; per caption rates from ``mention_rates``). That is the lever that sets
how well contrastive training aligns the text side with each attribute: frequently captioned
attributes are easy zero-shot tasks; rarely captioned ones stay visible to the image tower but
weakly aligned, the analogue of the paper's weak zero-shot datasets (SPEC §6). Defaults:

==============  ===============  ==================  =========================================
family          P(mention|desc)  per caption         role
==============  ===============  ==================  =========================================
shape (L, R)    0.85             0.64                easy: frequently captioned
color (L, R)    0.60             0.45                easy, but must be bound to its side
size (L, R)     0.50             0.38                medium
texture L       0.40             0.30                visible, less often captioned
texture R       0.25             0.19                visible, rarely captioned; confusable
                                                     with the more often captioned left texture
background      –                0.40                scene-level, medium
count (stars)   –                0.30                counting is hard
relation        –                0.30                relational (compares two objects), 3-way
==============  ===============  ==================  =========================================

A caption describes both objects (p 0.5), only the left one (0.25) or only the right one (0.25);
per caption rate = P(object described) × P(mention|described) for object attributes.

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
    "OBJECT_ATTRIBUTES",
    "RELATION_MIRROR",
    "SHIFTS",
    "SIDES",
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
SIDES = ("left", "right")
OBJECT_ATTRIBUTES = ("shape", "color", "size", "texture")
_STRIP_TOP = 56  # rows [56, 64) hold the stars; objects live in rows [0, 56)
_STAR_SLOTS = 8  # one star slot per 8-pixel column
SHIFTS = ("noise", "palette", "clutter", "sketch", "random")
"""Distribution shifts understood by ``sample_scenes``/``render`` (``None`` is the base world).

- ``noise``: strong pixel noise (std ``WorldConfig.shift_noise_std``).
- ``palette``: another RGB palette for objects and backgrounds, with stronger colour jitter.
- ``clutter``: random 8×8-pixel colour blocks, half-blended with the plain background.
- ``sketch``: black outlines of the objects and stars on a white page (no colour, no texture).
- ``random``: uniform noise images; the attribute table is sampled but not drawn.
"""

_DEFAULT_MENTION = {
    # Probability that a caption states the attribute, given that the object is described.
    "left_shape": 0.85,
    "right_shape": 0.85,
    "left_color": 0.6,
    "right_color": 0.6,
    "left_size": 0.5,
    "right_size": 0.5,
    "left_texture": 0.4,
    "right_texture": 0.25,
    # Scene-level attributes: unconditional probability per caption.
    "background": 0.4,
    "count": 0.3,
    "relation": 0.3,
}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines the world: vocabularies, geometry, palettes, caption statistics.

    Attribute values are sampled uniformly. ``mention`` holds, per attribute family, the
    probability that a caption mentions it: for object attributes the probability *given that
    the object is described* (each caption describes both objects with ``p_both``, only the left
    one with ``p_left_only``, otherwise only the right one), for scene attributes the
    unconditional probability. ``mention_rates`` gives the resulting per-caption rates.

    Attributes:
        shapes: Shape words.
        colors: Object colour words, aligned with ``palette``.
        sizes: Size words, aligned with ``radii``.
        textures: Texture words (``plain`` first).
        backgrounds: Background colour words, aligned with ``background_palette``.
        counts: Star-count words for 1, 2, ... stars.
        relations: Words for "the left object is higher than / lower than / level with the
            right one".
        palette: RGB of each object colour.
        background_palette: RGB of each background.
        radii: Half-extent in pixels of each size class (before ±``radius_jitter``).
        radius_jitter: Integer jitter of the radius.
        x_jitter: Horizontal jitter of an object's centre around its half's centre.
        y_step: Vertical centres are multiples of ``y_step`` pixels (8: on the patch grid).
        min_dy: Minimum vertical gap between the two objects' centres when not level.
        color_jitter: Uniform per-object jitter of each RGB channel.
        texture_shade: Brightness factor of the texture's dark pixels.
        noise_std: Standard deviation of the (uniform, per channel) pixel noise of the base world.
        shift_noise_std: Standard deviation of the pixel noise of the ``noise`` shift.
        shift_palette: RGB of each object colour under the ``palette`` shift.
        shift_background_palette: RGB of each background under the ``palette`` shift.
        shift_color_jitter: Colour jitter under the ``palette`` shift.
        p_both: Probability that a caption describes both objects.
        p_left_only: Probability that a caption describes only the left object.
        p_side: Probability that a single described object gets its "on the left/right".
        caption_error: Probability that a mentioned value is replaced by a wrong one.
        mention: Per-attribute mention probability (a mapping; stored as sorted pairs).
    """

    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    sizes: tuple[str, ...] = ("small", "medium", "large")
    textures: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")
    backgrounds: tuple[str, ...] = ("black", "gray", "brown", "navy")
    counts: tuple[str, ...] = ("one", "two", "three", "four")
    relations: tuple[str, ...] = ("higher", "lower", "level")
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
    radius_jitter: int = 0
    x_jitter: int = 0
    y_step: int = 8
    min_dy: int = 8
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
    p_both: float = 0.5
    p_left_only: float = 0.25
    p_side: float = 0.9
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
        if len(self.counts) > _STAR_SLOTS:
            raise ValueError(f"at most {_STAR_SLOTS} star counts")
        if len(self.relations) != 3:
            raise ValueError("relations must be three words (left higher, lower, level)")
        if self.y_step < 1:
            raise ValueError(f"y_step must be >= 1, got {self.y_step}")
        if not 0 <= self.p_both + self.p_left_only <= 1:
            raise ValueError("p_both + p_left_only must lie in [0, 1]")

    @property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        """Attribute family → value words, in a fixed order (objects left, right, then scene)."""
        per_object = {
            "shape": self.shapes,
            "color": self.colors,
            "size": self.sizes,
            "texture": self.textures,
        }
        out = {f"{side}_{a}": per_object[a] for side in SIDES for a in OBJECT_ATTRIBUTES}
        out.update(background=self.backgrounds, count=self.counts, relation=self.relations)
        return out

    def mention_prob(self, attribute: str) -> float:
        """The configured mention probability of one attribute family (see class docstring)."""
        return dict(self.mention)[attribute]

    def replace(self, **changes: object) -> WorldConfig:
        """A copy with some fields changed (``mention`` may be a partial mapping)."""
        if "mention" in changes and isinstance(changes["mention"], Mapping):
            changes["mention"] = {**dict(self.mention), **changes["mention"]}
        return dataclasses.replace(self, **changes)


DEFAULT_WORLD = WorldConfig()
ATTRIBUTES: dict[str, tuple[str, ...]] = DEFAULT_WORLD.attributes
"""Attribute family → value words of the default world (class names of the tasks)."""

_SHAPE_TPL = ("a {} on the %s", "a photo of a {} on the %s", "a picture with a {} on the %s")
_OBJ_TPL = (
    "a {} object on the %s",
    "a photo of a {} object on the %s",
    "a picture with a {} object on the %s",
)
TEMPLATES: dict[str, tuple[str, ...]] = {
    **{f"{s}_shape": tuple(t % s for t in _SHAPE_TPL) for s in SIDES},
    **{f"{s}_{a}": tuple(t % s for t in _OBJ_TPL) for s in SIDES for a in OBJECT_ATTRIBUTES[1:]},
    "background": (
        "a photo on a {} background",
        "objects on a {} background",
        "a picture with a {} background",
    ),
    "count": ("a photo with {} stars", "a picture with {} stars", "objects with {} stars"),
    "relation": (
        "the left one is {}",
        "a photo where the left object is {}",
        "a picture where the left one is {}",
    ),
    # Reference task (the ImageNet analogue): class names are "<color> <shape>" of the left object.
    "reference": ("a {} on the left", "a photo of a {} on the left", "a picture with a {}"),
}
"""Zero-shot prompt templates per task (lowercase vocabulary words, no punctuation)."""


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes: one int array per attribute family plus the geometry to draw them.

    Attribute arrays hold value indices into ``config.attributes[family]``; ``count`` index ``k``
    means ``k + 1`` stars; ``relation`` 0 means the left object is higher, 1 lower, 2 level.
    Geometry arrays are in pixels. Use ``attributes()`` for the label table and
    ``words(family)`` for value words.
    """

    left_shape: np.ndarray
    left_color: np.ndarray
    left_size: np.ndarray
    left_texture: np.ndarray
    right_shape: np.ndarray
    right_color: np.ndarray
    right_size: np.ndarray
    right_texture: np.ndarray
    background: np.ndarray
    count: np.ndarray
    relation: np.ndarray
    left_x: np.ndarray
    left_y: np.ndarray
    left_r: np.ndarray
    right_x: np.ndarray
    right_y: np.ndarray
    right_r: np.ndarray
    phase: np.ndarray
    """(n, 2) texture phase of the left and right object."""
    star_slots: np.ndarray
    """(n, 8) bool: which bottom-strip slots hold a star."""
    shift: str | None = None
    config: WorldConfig = DEFAULT_WORLD

    def __len__(self) -> int:
        return int(self.left_shape.shape[0])

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
    """Sample ``n`` scenes: uniform attribute values and jittered geometry.

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
    radii = np.asarray(config.radii)
    j = config.radius_jitter
    left_r = radii[attrs["left_size"]] + rng.integers(-j, j + 1, n)
    right_r = radii[attrs["right_size"]] + rng.integers(-j, j + 1, n)
    half = IMAGE_SIZE // 4
    left_x = half + rng.integers(-config.x_jitter, config.x_jitter + 1, n)
    right_x = 3 * half + rng.integers(-config.x_jitter, config.x_jitter + 1, n)
    # Vertical centres on the grid of rows inside the object area above the star strip: for
    # "higher"/"lower" a pair of rows at least min_dy apart (uniform over such pairs), for
    # "level" one row for both.
    y_min, y_max = 14, _STRIP_TOP - 15
    rows = np.array([y for y in range(y_min, y_max + 1) if y % config.y_step == 0])
    hi_rows, lo_rows = np.nonzero(rows[None, :] - rows[:, None] >= config.min_dy)
    if hi_rows.size == 0:
        raise ValueError(f"no two rows {config.min_dy} px apart with y_step {config.y_step}")
    pair = rng.integers(0, hi_rows.size, n)
    hi, lo = rows[hi_rows[pair]], rows[lo_rows[pair]]
    same = rows[rng.integers(0, rows.size, n)]
    relation = attrs["relation"]
    left_y = np.where(relation == 0, hi, np.where(relation == 1, lo, same))
    right_y = np.where(relation == 0, lo, np.where(relation == 1, hi, same))
    phase = rng.integers(0, 8, (n, 2))
    order = np.argsort(rng.random((n, _STAR_SLOTS)), axis=1)
    ranks = np.argsort(order, axis=1)
    star_slots = ranks <= attrs["count"][:, None]
    return Scenes(
        **attrs,
        left_x=left_x,
        left_y=left_y,
        left_r=left_r,
        right_x=right_x,
        right_y=right_y,
        right_r=right_r,
        phase=phase,
        star_slots=star_slots,
        shift=shift,
        config=config,
    )


RELATION_MIRROR = (1, 0, 2)
"""Relation index seen from the right object: higher <-> lower, level stays."""


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _shape_mask(shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(n, H, W) bool mask of each object; shape indices follow ``WorldConfig.shapes`` order.

    Every shape stays within ``|dx| <= r`` of its centre, so with the default jitter an object
    never crosses the vertical midline: the left and right halves show one object each.
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

    Labels: 0 background, 1/2 left object light/dark (texture), 3/4 right object, 5 star,
    6 + b the clutter block b. One gather turns labels into colours; noise is added last.
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
    table = np.zeros((n, 6 + 64 * (shift == "clutter"), 3), np.float32)
    if sketch:
        table[:, 0], table[:, 1:] = 235.0, 20.0
    else:
        table[:, 0] = bg_pal[scenes.background] + rng.uniform(-8, 8, (n, 1)).astype(np.float32)
        table[:, 5] = 240.0
    if shift == "clutter":  # 8×8-pixel blocks of random colour, half-blended with the background
        blocks = rng.integers(0, 256, (n, 64, 3)).astype(np.float32)
        table[:, 6:] = 0.5 * blocks + 0.5 * table[:, :1]
        labels = np.broadcast_to(_BLOCK_MAP + np.uint8(6), (n, IMAGE_SIZE, IMAGE_SIZE)).copy()
    else:
        labels = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for k, side in enumerate(SIDES):
        mask = _shape_mask(
            getattr(scenes, f"{side}_shape"),
            getattr(scenes, f"{side}_x"),
            getattr(scenes, f"{side}_y"),
            getattr(scenes, f"{side}_r"),
        )
        if sketch:
            labels[_outline(mask)] = 1
            continue
        color = palette[getattr(scenes, f"{side}_color")]
        color = color + rng.uniform(-jitter, jitter, (n, 3)).astype(np.float32)
        table[:, 1 + 2 * k] = color
        table[:, 2 + 2 * k] = color * np.float32(cfg.texture_shade)
        pattern = _texture_mask(getattr(scenes, f"{side}_texture"), scenes.phase[:, k])
        labels = np.where(mask, pattern.view(np.uint8) + np.uint8(1 + 2 * k), labels)
    labels[_star_mask(scenes.star_slots)] = 5
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
    """Per-caption probability that each attribute family is mentioned (before any error).

    Object attributes: P(object described) × ``config.mention``; scene attributes: as configured.
    """
    p_side = {"left": config.p_both + config.p_left_only, "right": 1.0 - config.p_left_only}
    out = {}
    for attr in config.attributes:
        side = attr.split("_")[0]
        p = config.mention_prob(attr)
        out[attr] = p * p_side[side] if side in p_side else p
    return out


def captions(
    scenes: Scenes,
    seed: int,
    config: WorldConfig | None = None,
    return_mentions: bool = False,
) -> list[str] | tuple[list[str], dict[str, np.ndarray]]:
    """Templated captions that mention a random subset of each scene's attributes.

    Grammar: object phrases ``a [size] [texture] [color] <shape|object>`` placed with
    ``on the left/right`` or ``to the left/right of``, then optionally ``on a <bg> background``,
    ``with <count> star(s)`` and ``and the <left|right> one is <higher|lower>``. Words are
    lowercase vocabulary words separated by single spaces, no punctuation.

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
    u = rng.random(n)
    described = {
        "left": u < cfg.p_both + cfg.p_left_only,
        "right": (u < cfg.p_both) | (u >= cfg.p_both + cfg.p_left_only),
    }
    mentions = {}
    for attr in cfg.attributes:
        side = attr.split("_")[0]
        m = rng.random(n) < cfg.mention_prob(attr)
        mentions[attr] = m & described[side] if side in described else m
    form = rng.integers(0, 4, n)
    side_said = rng.random(n) < cfg.p_side
    rel_side = rng.integers(0, 2, n)
    values = {a: getattr(scenes, a).copy() for a in cfg.attributes}
    if cfg.caption_error > 0:
        for a, v in values.items():
            wrong = rng.random(n) < cfg.caption_error
            shift = rng.integers(1, len(vocab[a]), n)
            v[wrong] = (v[wrong] + shift[wrong]) % len(vocab[a])

    def phrase(i: int, side: str) -> str:
        words = ["a"]
        for a in ("size", "texture", "color"):
            if mentions[f"{side}_{a}"][i]:
                words.append(vocab[f"{side}_{a}"][values[f"{side}_{a}"][i]])
        shape = f"{side}_shape"
        words.append(vocab[shape][values[shape][i]] if mentions[shape][i] else "object")
        return " ".join(words)

    out = []
    for i in range(n):
        if described["left"][i] and described["right"][i]:
            left, right = phrase(i, "left"), phrase(i, "right")
            text = (
                f"{left} on the left and {right} on the right",
                f"{right} on the right and {left} on the left",
                f"{left} to the left of {right}",
                f"{right} to the right of {left}",
            )[form[i]]
        else:
            side = "left" if described["left"][i] else "right"
            text = phrase(i, side) + (f" on the {side}" if side_said[i] else "")
        if mentions["background"][i]:
            text += f" on a {vocab['background'][values['background'][i]]} background"
        if mentions["count"][i]:
            k = values["count"][i]
            text += f" with {vocab['count'][k]} {'star' if k == 0 else 'stars'}"
        if mentions["relation"][i]:
            said = SIDES[rel_side[i]]
            r = values["relation"][i] if said == "left" else RELATION_MIRROR[values["relation"][i]]
            text += f" and the {said} one is {vocab['relation'][r]}"
        out.append(text)
    if return_mentions:
        return out, mentions
    return out


def attribute_table(config: WorldConfig = DEFAULT_WORLD) -> list[dict[str, object]]:
    """One row per attribute family: values, chance level and caption statistics.

    Rows hold ``attribute``, ``values`` (the class names), ``classes``, ``chance`` (1/K),
    ``p_mention`` (configured, given the object is described) and ``caption_rate`` (per
    caption, from ``mention_rates``), for model cards and chapter tables.
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
    obj = 5  # a size texture color shape
    return 2 * obj + 6 + 4 + 3 + 6  # "on the left and ... on the right", bg, count, relation


def vocabulary(config: WorldConfig = DEFAULT_WORLD) -> list[str]:
    """Every word a caption, class name or prompt template can contain (sorted, unique)."""
    words = {
        "a", "on", "the", "left", "right", "and", "to", "of", "object", "background",
        "with", "star", "stars", "one", "is",
    }  # fmt: skip
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
