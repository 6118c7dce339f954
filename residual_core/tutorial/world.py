"""A procedural image–caption world: one textured object, a background and a row of stars.

Every 64×64 RGB image shows one object with a shape, a colour, a size, a texture and a
horizontal position (left, center or right of the image); a background (a colour, or in v3 a
pattern); and a row of
one to four small stars in the bottom 8 pixel rows. Those seven attribute families are what
captions talk about and what the tasks ask.

The world comes in two renderer **versions** (``WorldConfig.version``) and three named
configs (``WORLDS``):

- **v1** (``DEFAULT_WORLD``, ``WORLDS["v1"]``; the earlier 4-layer tiny CLIP's): objects sit
  on the 8-pixel patch grid (centres on patch corners, no size jitter; the vertical position
  is a nuisance drawn from four grid rows): a 4-layer ViT trained from
  scratch on a CPU learns shapes several times faster when a shape always cuts the same patch
  pattern. All attributes are visible at 8×8-patch resolution. Its renders are frozen: a test
  compares them with hashes taken before v2 existed.
- **v2** (``NUISANCE_WORLD``, ``WORLDS["v2"]``; the shipped 8-layer tiny CLIP and every
  chapter use it): on top of the attributes every image varies continuously along **nuisance
  factors that no caption ever mentions** (``WorldConfig`` fields in brackets):

  - the object's exact centre (``x_jitter`` around its position class, ``y_range``
    vertically), its scale (``scale_jitter`` around its size class) and its rotation
    (``rotation``); the texture pattern turns with the object and starts at a random offset;
  - the lighting: one brightness factor for the whole image (``light_range``);
  - a background grating: a sinusoid of random orientation, period and phase
    (``grating_amplitude``, ``grating_period``) over the background colour;
  - up to ``specks`` small grey specks scattered over the background;
  - pixel noise (``noise_std``), per-object colour jitter (``color_jitter``) and background
    brightness jitter (``background_jitter``);

  and it has one more shift, ``dark`` (dim light with a colour cast).
- **v3** (``PATTERN_WORLD``, ``WORLDS["v3"]``; renderer version 2): v2 whose background class
  is a pattern (bare, waves, ribs or tiles, words ``bare``/``wavy``/``ribbed``/``tiled``) in a
  colour drawn for every image, instead of a colour per class (and no grating): the class is
  no longer in the image's mean colour, which every head reads.

Why v2: natural images give a ViT's early and middle layers many continuous factors to encode
that its last layers, aligned with text, discard. A world whose images vary only along the
captioned attributes bounds every head's intrinsic dimension by the same handful of factors
(an 8-layer tiny CLIP on such a world had a flat TwoNN profile, 5.4–6.0 in every layer), so
the paper's depth profiles (the linear/nonlinear ratio growing with depth, the hunchback of
the nonlinear dimension) cannot show. Global photometric nuisance (lighting, colour jitter)
is kept to few dimensions, since every head can see it from the first layer; geometric and
texture nuisance averages out over the image and is only visible to heads that look at the
object. The record of which v2 choices moved which claims is
``residual_core/tutorial/assets/prototypes.json``.

Why one object: an earlier version of this world drew two objects and asked for the attributes
of the left or right one. A tiny CLIP trained on it knew *which* colours and shapes were in the
image but not *where* (the binding problem real CLIPs also have; Yuksekgonul et al. 2023), so
most per-side tasks stayed near chance zero-shot while linear probes read them. With one object
every task measures alignment, not binding.

Captions are templated and mention each attribute only with a configured probability
(``WorldConfig.mention``). That is the lever that sets how well contrastive training aligns the
text side with each attribute: frequently captioned attributes are easy zero-shot tasks; rarely
captioned ones stay visible to the image tower but weakly aligned, the analogue of the paper's
weak zero-shot datasets. Defaults (both versions):

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
the geometry (and, in v2, the nuisance) of every scene, ``render`` draws pixels (noise, colour
jitter, clutter), ``captions`` draws which attributes are said. Rendering is vectorised over
the batch in numpy (see ``benchmarks/world_throughput.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ATTRIBUTES",
    "DEFAULT_WORLD",
    "BACKGROUND_STYLES",
    "HIDDEN_BY_SHIFT",
    "IMAGE_SIZE",
    "NUISANCE",
    "NUISANCE_SHIFTS",
    "NUISANCE_WORLD",
    "PATTERN_WORLD",
    "PREFIXES",
    "SHIFTS",
    "TEMPLATES",
    "WORLDS",
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
    "world_config",
]

IMAGE_SIZE = 64
_STRIP_TOP = 56  # rows [56, 64) hold the stars; the object lives in rows [0, 56)
_STAR_SLOTS = 8  # one star slot per 8-pixel column
SHIFTS = ("noise", "palette", "clutter", "sketch", "random")
"""Distribution shifts of the v1 world understood by ``sample_scenes``/``render`` (``None`` is
the base world); ``WorldConfig.shifts`` gives a config's own.

- ``noise``: strong pixel noise (std ``WorldConfig.shift_noise_std``).
- ``palette``: another RGB palette for objects and backgrounds, with stronger colour jitter.
- ``clutter``: random 8×8-pixel colour blocks, half-blended with the background colour (in v2
  in place of the grating).
- ``sketch``: black outlines of the object and stars on a white page (no colour, no texture).
- ``random``: uniform noise images; the attribute table is sampled but not drawn.
"""

NUISANCE_SHIFTS = ("noise", "palette", "clutter", "sketch", "dark", "random")
"""The shifts of the v2 world: those of v1 and ``dark``, dim light (``shift_light_range``)
with a random colour cast (``shift_cast``)."""

HIDDEN_BY_SHIFT: dict[str, tuple[str, ...]] = {
    "sketch": ("color", "texture", "background"),
    "random": ("shape", "color", "size", "texture", "position", "background", "count"),
}
"""Attribute families a shift does not draw (their labels are in the scene table only)."""

NUISANCE = ("x", "y", "r", "angle", "phase", "light", "grating", "specks")
"""``Scenes`` fields that vary continuously in the v2 world and that no caption mentions."""

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
VERSIONS = (1, 2)
BACKGROUND_STYLES = ("colour", "pattern")
"""How the background class is drawn: ``colour`` (one colour per class, from
``background_palette``) or ``pattern`` (v2: bare, horizontal waves, vertical ribs or tiles, in
a colour drawn at random for every image from ``background_range``; the class cannot be read
from an image's mean colour)."""


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines the world: vocabularies, geometry, nuisance, caption statistics.

    Attribute values are sampled uniformly. ``mention`` holds, per attribute family, the
    probability that a caption mentions it. ``version`` selects the sampler and renderer;
    fields marked (v1) or (v2) are read by that version only, the others by both.

    Attributes:
        version: 1 (the patch-grid world of the shipped checkpoint) or 2 (continuous
            caption-free nuisance, the ``dark`` shift).
        shapes: Shape words.
        colors: Object colour words, aligned with ``palette``.
        sizes: Size words, aligned with ``radii``.
        textures: Texture words (``plain`` first).
        positions: Horizontal position words, aligned with ``x_centres``.
        backgrounds: Background words, aligned with ``background_palette`` (colour style) or
            naming the four patterns (pattern style).
        counts: Star-count words for 1, 2, ... stars.
        palette: RGB of each object colour.
        background_palette: RGB of each background.
        radii: Half-extent in pixels of each size class (before jitter).
        x_centres: Horizontal centre in pixels of each position.
        x_jitter: (v1) integer jitter of the object's centre around its position's; (v2) the
            centre is uniform within ± this many pixels of its position's.
        radius_jitter: (v1) integer jitter of the radius.
        y_rows: (v1) vertical centres the object is drawn at (uniform; a nuisance, not a task).
        y_range: (v2) the object's vertical centre is uniform in this range (pixels).
        scale_jitter: (v2) the radius is multiplied by a uniform factor in [1 − j, 1 + j].
        rotation: (v2) the object is rotated by a uniform angle in ± this many degrees.
        light_range: (v2) uniform range of the brightness factor applied to the whole image.
        grating_amplitude: (v2) amplitude (grey levels) of the background grating (uniform in
            [0, amplitude]).
        grating_period: (v2) uniform range of the grating's period in pixels.
        specks: (v2) up to this many 2×2-pixel grey specks on the background (uniform count).
        color_jitter: Uniform per-object jitter of each RGB channel.
        background_jitter: Uniform per-image brightness jitter of the background colour.
        texture_shade: Brightness factor of the texture's dark pixels.
        noise_std: Standard deviation of the (uniform, per channel) pixel noise of the base world.
        shift_noise_std: Standard deviation of the pixel noise of the ``noise`` shift.
        shift_palette: RGB of each object colour under the ``palette`` shift.
        shift_background_palette: RGB of each background under the ``palette`` shift.
        shift_color_jitter: Colour jitter under the ``palette`` shift.
        shift_light_range: (v2) brightness range of the ``dark`` shift.
        shift_cast: (v2) per-channel colour cast (uniform in ± this many grey levels) of
            ``dark``.
        background_style: How the background class is drawn (``BACKGROUND_STYLES``):
            ``colour`` (``background_palette``) or ``pattern`` (v2 renderer only).
        background_range: (pattern) uniform range of the background's grey level.
        shift_background_range: (pattern) the same under the ``palette`` shift.
        background_tint: (pattern) uniform per-channel tint of the background colour.
        pattern_amplitude: (pattern) peak amplitude (grey levels) of the background pattern.
        caption_error: Probability that a mentioned value is replaced by a wrong one.
        mention: Per-attribute mention probability (a mapping; stored as sorted pairs).
    """

    version: int = 1
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
    radii: tuple[float, ...] = (6, 9, 12)
    x_centres: tuple[float, ...] = (16, 32, 48)
    x_jitter: float = 0
    radius_jitter: int = 0
    y_rows: tuple[int, ...] = (16, 24, 32, 40)
    y_range: tuple[float, float] = (17.0, 39.0)
    scale_jitter: float = 0.08
    rotation: float = 10.0
    light_range: tuple[float, float] = (0.75, 1.15)
    grating_amplitude: float = 10.0
    grating_period: tuple[float, float] = (5.0, 14.0)
    specks: int = 3
    color_jitter: int = 15
    background_jitter: float = 8.0
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
    shift_light_range: tuple[float, float] = (0.35, 0.55)
    shift_cast: float = 20.0
    background_style: str = "colour"
    background_range: tuple[float, float] = (35.0, 105.0)
    shift_background_range: tuple[float, float] = (95.0, 165.0)
    background_tint: float = 25.0
    pattern_amplitude: float = 50.0
    caption_error: float = 0.0
    mention: Mapping[str, float] | tuple[tuple[str, float], ...] = field(
        default_factory=lambda: tuple(sorted(_DEFAULT_MENTION.items()))
    )

    def __post_init__(self) -> None:
        pairs = self.mention.items() if isinstance(self.mention, Mapping) else self.mention
        pairs = tuple(sorted((str(k), float(v)) for k, v in pairs))
        object.__setattr__(self, "mention", pairs)
        if self.version not in VERSIONS:
            raise ValueError(f"unknown world version {self.version!r}; valid: 1, 2")
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
        if self.background_style not in BACKGROUND_STYLES:
            raise ValueError(f"unknown background_style {self.background_style!r}; valid: "
                             f"{', '.join(BACKGROUND_STYLES)}")
        if self.background_style == "pattern" and (self.version != 2
                                                   or len(self.backgrounds) != 4):
            raise ValueError("background_style 'pattern' draws 4 patterns and needs version 2")
        if len(self.shapes) != 5 or len(self.textures) != 4:
            raise ValueError("the renderer draws exactly 5 shapes and 4 textures (in this order)")
        if len(self.radii) != len(self.sizes):
            raise ValueError("radii must match sizes")
        if len(self.x_centres) != len(self.positions):
            raise ValueError("x_centres must match positions")
        if len(self.counts) > _STAR_SLOTS:
            raise ValueError(f"at most {_STAR_SLOTS} star counts")
        if self.version == 1:
            reach = max(self.radii) + self.radius_jitter
            if min(self.y_rows) - reach < 0 or max(self.y_rows) + reach >= _STRIP_TOP:
                raise ValueError(f"y_rows {self.y_rows} put objects outside rows "
                                 f"[0, {_STRIP_TOP})")
            return
        if not 0 <= self.scale_jitter < 1:
            raise ValueError(f"scale_jitter must be in [0, 1), got {self.scale_jitter}")
        # Every shape fits |u|, |v| <= r in its frame; rotated by θ it spans r(cos θ + sin θ).
        theta = np.deg2rad(min(abs(self.rotation), 45.0))
        reach = max(self.radii) * (1 + self.scale_jitter) * (np.cos(theta) + np.sin(theta))
        lo, hi = self.y_range
        if lo - reach < -1 or hi + reach > _STRIP_TOP + 1:
            raise ValueError(f"y_range {self.y_range} puts objects outside rows [0, {_STRIP_TOP})")
        gaps = np.diff(sorted(self.x_centres))
        if len(gaps) and 2 * self.x_jitter >= gaps.min():
            raise ValueError(f"x_jitter {self.x_jitter} lets position classes overlap")

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

    @property
    def shifts(self) -> tuple[str, ...]:
        """The distribution shifts this world's version draws: ``SHIFTS`` or ``NUISANCE_SHIFTS``."""
        return SHIFTS if self.version == 1 else NUISANCE_SHIFTS

    @property
    def name(self) -> str:
        """``v1``/``v2`` where this is one of ``WORLDS``, else ``custom-v<version>``."""
        for key, cfg in WORLDS.items():
            if cfg == self:
                return key
        return f"custom-v{self.version}"

    def mention_prob(self, attribute: str) -> float:
        """The configured mention probability of one attribute family."""
        return dict(self.mention)[attribute]

    def replace(self, **changes: object) -> WorldConfig:
        """A copy with some fields changed (``mention`` may be a partial mapping)."""
        if "mention" in changes and isinstance(changes["mention"], Mapping):
            changes["mention"] = {**dict(self.mention), **changes["mention"]}
        return dataclasses.replace(self, **changes)

    def without_nuisance(self) -> WorldConfig:
        """The same world with every caption-free nuisance factor switched off.

        v2: objects sit exactly on their position's centre and mid-height, at their class
        radius, unrotated, under neutral light, on a flat background without specks or noise.
        v1: no pixel noise, colour or background jitter, one vertical row (the middle one).
        """
        if self.version == 1:
            return self.replace(x_jitter=0, radius_jitter=0,
                                y_rows=(self.y_rows[len(self.y_rows) // 2],), color_jitter=0,
                                background_jitter=0.0, noise_std=0.0)
        mid = (self.y_range[0] + self.y_range[1]) / 2
        return self.replace(x_jitter=0.0, y_range=(mid, mid), scale_jitter=0.0, rotation=0.0,
                            light_range=(1.0, 1.0), grating_amplitude=0.0, specks=0,
                            color_jitter=0, background_jitter=0.0, noise_std=0.0)


DEFAULT_WORLD = WorldConfig()
"""The v1 world, the earlier 4-layer tiny CLIP's (``WorldConfig()``'s defaults; the shipped
checkpoint and the chapters use ``NUISANCE_WORLD``)."""
NUISANCE_WORLD = WorldConfig(
    version=2,
    radii=(7.0, 10.0, 13.0),
    x_centres=(16.0, 32.0, 48.0),
    x_jitter=2.0,
    grating_amplitude=16.0,
    color_jitter=12,
    background_jitter=8.0,
    noise_std=6.0,
)
"""The v2 world (tutorial-model candidate P4): caption-free continuous nuisance, larger
objects (radii 7/10/13; the 8-layer model had learnt no shape after 1,000 steps with 6/9/12 and
±15°, ±3 px, ±10%), photometric nuisance of pixel noise 6, grating up to 16, colour jitter 12
and background jitter 8. Candidate P3 was trained on milder photometric nuisance (2, 10, 8, 4);
the stronger one taught the same architecture shape better (zero-shot 0.67 vs 0.53) and made
the linear/TwoNN ratio grow with depth, at the price of a higher TwoNN ID in layer 0."""
PATTERN_WORLD = NUISANCE_WORLD.replace(
    background_style="pattern",
    backgrounds=("bare", "wavy", "ribbed", "tiled"),
    pattern_amplitude=50.0,
)
"""The v3 world: v2 with the background class drawn as a pattern (bare, waves, ribs, tiles) in
a colour drawn anew for every image (grey level in ``background_range``, each channel tinted by
up to ``background_tint``), in place of one colour per class and the nuisance grating. In v2
every head reads the background class almost perfectly from the image's mean colour, so a
linear probe names the background for nearly every head whatever the head specialises in; a
pattern has no mean colour, so reading it needs a non-linear step and only some units learn it
(what it did to the tutorial model's claims: the README's "Status of the tutorial model")."""
WORLDS: dict[str, WorldConfig] = {"v1": DEFAULT_WORLD, "v2": NUISANCE_WORLD, "v3": PATTERN_WORLD}
"""The named worlds (``--world`` of the training script)."""


def world_config(name: str | WorldConfig) -> WorldConfig:
    """The world called ``name`` in ``WORLDS`` (a config is returned as is)."""
    if isinstance(name, WorldConfig):
        return name
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid: {', '.join(WORLDS)}")
    return WORLDS[name]


ATTRIBUTES: dict[str, tuple[str, ...]] = DEFAULT_WORLD.attributes
"""Attribute family → value words of the default world (class names of the tasks; the same in
both versions)."""

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
    means ``k + 1`` stars. In v1 geometry arrays are integers in pixels and the v2-only fields
    are ``None``; in v2 geometry and nuisance arrays (``NUISANCE``) are float32 in pixels,
    radians or factors. Use ``attributes()`` for the label table and ``words(family)`` for
    value words.
    """

    shape: np.ndarray
    color: np.ndarray
    size: np.ndarray
    texture: np.ndarray
    position: np.ndarray
    background: np.ndarray
    count: np.ndarray
    x: np.ndarray
    """(n,) horizontal centre of the object."""
    y: np.ndarray
    """(n,) vertical centre of the object."""
    r: np.ndarray
    """(n,) radius (half-extent before rotation) of the object."""
    phase: np.ndarray
    """v1: (n,) integer texture phase; v2: (n, 2) offset of the texture pattern in the
    object's frame (pixels)."""
    star_slots: np.ndarray
    """(n, 8) bool: which bottom-strip slots hold a star."""
    angle: np.ndarray | None = None
    """(v2) (n,) rotation of the object (radians, counter-clockwise on screen)."""
    light: np.ndarray | None = None
    """(v2) (n,) brightness factor of the whole image."""
    grating: np.ndarray | None = None
    """(v2) (n, 4) background grating: orientation (radians), period (pixels), phase,
    amplitude."""
    specks: np.ndarray | None = None
    """(v2) (n, k, 3) background specks: column, row, grey level (0: no speck)."""
    shift: str | None = None
    config: WorldConfig = DEFAULT_WORLD

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def _arrays(self) -> dict[str, np.ndarray]:
        """Every array field that is set, in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("shift", "config") and getattr(self, f.name) is not None}

    def attributes(self) -> dict[str, np.ndarray]:
        """Attribute family → (n,) int64 value indices, in ``config.attributes`` order."""
        return {a: getattr(self, a) for a in self.config.attributes}

    def words(self, attribute: str) -> list[str]:
        """The value word of ``attribute`` for every scene."""
        vocab = self.config.attributes[attribute]
        return [vocab[i] for i in getattr(self, attribute)]

    def subset(self, index: np.ndarray | slice) -> Scenes:
        """The scenes selected by ``index`` (same shift and config)."""
        arrays = {k: a[index] for k, a in self._arrays().items()}
        return Scenes(**arrays, shift=self.shift, config=self.config)

    @classmethod
    def concatenate(cls, parts: list[Scenes]) -> Scenes:
        """One batch from several of the same shift and config, in order."""
        first = parts[0]
        arrays = {k: np.concatenate([p._arrays()[k] for p in parts]) for k in first._arrays()}
        return cls(**arrays, shift=first.shift, config=first.config)

    def keys(self) -> np.ndarray:
        """(n, k) int64 rows that identify each scene (attributes, geometry to 1/1000)."""
        cols = []
        for a in self._arrays().values():
            a = a.reshape(len(self), -1)
            cols.append(np.rint(a * 1000).astype(np.int64) if a.dtype.kind == "f"
                        else a.astype(np.int64))
        return np.concatenate(cols, axis=1)


def _check_shift(shift: str | None, config: WorldConfig) -> None:
    if shift is not None and shift not in config.shifts:
        raise ValueError(f"unknown shift {shift!r} for world version {config.version}; "
                         f"valid: None, {', '.join(config.shifts)}")


def sample_scenes(
    n: int, seed: int, config: WorldConfig = DEFAULT_WORLD, shift: str | None = None
) -> Scenes:
    """Sample ``n`` scenes: uniform attribute values, geometry and (v2) nuisance.

    Args:
        n: Number of scenes.
        seed: Seed of the scene generator (independent of the render and caption seeds).
        config: The world.
        shift: ``None`` for the base world or one of ``config.shifts`` (recorded, used by
            ``render``).

    Returns:
        The scenes.
    """
    _check_shift(shift, config)
    c = config
    rng = np.random.default_rng([seed, 0x5CE7E])
    attrs = {a: rng.integers(0, len(v), n) for a, v in c.attributes.items()}
    if c.version == 1:
        j = c.radius_jitter
        r = np.asarray(c.radii)[attrs["size"]] + rng.integers(-j, j + 1, n)
        x = np.asarray(c.x_centres)[attrs["position"]]
        xj = int(c.x_jitter)
        x = x + rng.integers(-xj, xj + 1, n)
        y = np.asarray(c.y_rows)[rng.integers(0, len(c.y_rows), n)]
        phase = rng.integers(0, 8, n)
        order = np.argsort(rng.random((n, _STAR_SLOTS)), axis=1)
        ranks = np.argsort(order, axis=1)
        star_slots = ranks <= attrs["count"][:, None]
        return Scenes(**attrs, x=x, y=y, r=r, phase=phase, star_slots=star_slots, shift=shift,
                      config=c)

    def uniform(lo: float, hi: float, shape: int | tuple[int, ...] = n) -> np.ndarray:
        return rng.uniform(lo, hi, shape).astype(np.float32)

    x = np.asarray(c.x_centres, np.float32)[attrs["position"]] + uniform(-c.x_jitter,
                                                                          c.x_jitter)
    y = uniform(*c.y_range)
    r = np.asarray(c.radii, np.float32)[attrs["size"]] * uniform(1 - c.scale_jitter,
                                                                  1 + c.scale_jitter)
    angle = np.deg2rad(uniform(-c.rotation, c.rotation)).astype(np.float32)
    phase = uniform(0.0, 8.0, (n, 2))
    light = uniform(*c.light_range)
    grating = np.stack([uniform(0.0, np.pi), uniform(*c.grating_period),
                        uniform(0.0, 2 * np.pi), uniform(0.0, c.grating_amplitude)], axis=1)
    k = max(c.specks, 1)
    specks = np.stack([uniform(1.0, IMAGE_SIZE - 2.0, (n, k)),
                       uniform(1.0, _STRIP_TOP - 2.0, (n, k)), uniform(60.0, 200.0, (n, k))],
                      axis=2)
    present = np.arange(k)[None] < rng.integers(0, c.specks + 1, n)[:, None]
    specks[..., 2] *= present
    order = np.argsort(rng.random((n, _STAR_SLOTS)), axis=1)
    ranks = np.argsort(order, axis=1)
    star_slots = ranks <= attrs["count"][:, None]
    return Scenes(**attrs, x=x, y=y, r=r, angle=angle, phase=phase, light=light,
                  grating=grating, specks=specks, star_slots=star_slots, shift=shift, config=c)


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _object_frame(scenes: Scenes) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) coordinates of every pixel in each object's frame (centred, unrotated).

    ``u`` runs along the object's horizontal axis, ``v`` downwards along its vertical axis.
    In v1 (no rotation) they are the plain offsets from the centre.
    """
    dx = _XX[None] - scenes.x[:, None, None].astype(np.float32)
    dy = _YY[None] - scenes.y[:, None, None].astype(np.float32)
    if scenes.angle is None:
        return dx, dy
    cos, sin = np.cos(scenes.angle)[:, None, None], np.sin(scenes.angle)[:, None, None]
    return cos * dx - sin * dy, sin * dx + cos * dy


def _shape_mask(shape: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(n, H, W) bool mask of each object from its frame coordinates.

    Shape indices follow ``WorldConfig.shapes`` order; unrotated, every shape stays within
    ``|u| <= r`` and ``|v| <= r``.
    """
    mask = np.zeros(u.shape, dtype=bool)
    r = r.astype(np.float32)
    for s in range(5):
        sel = np.flatnonzero(shape == s)
        if sel.size == 0:
            continue
        du, dv = np.abs(u[sel]), v[sel]
        rr = r[sel, None, None]
        if s == 0:  # circle
            m = du * du + dv * dv <= rr * rr + rr * 0.5
        elif s == 1:  # square
            m = (du <= 0.85 * rr) & (np.abs(dv) <= 0.85 * rr)
        elif s == 2:  # triangle, apex up
            m = (dv >= -rr) & (dv <= rr) & (du <= (dv + rr) * 0.5)
        elif s == 3:  # diamond
            m = du + np.abs(dv) <= rr + 0.5
        else:  # cross
            arm = np.maximum(rr / 3.0, 1.5)
            adv = np.abs(dv)
            m = ((du <= arm) & (adv <= rr)) | ((adv <= arm) & (du <= rr))
        mask[sel] = m
    return mask


_TEXTURE_PERIOD = 8  # v1 texture phases; every pattern below repeats within 8 pixels


def _texture_table() -> np.ndarray:
    """(4 textures, 8 phases, H, W) bool table of dark texture pixels (v1, image-aligned)."""
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


def _texture_mask_v1(texture: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """(n, H, W) bool mask of the dark texture pixels (plain, striped, checkered, dotted)."""
    return _TEXTURES[texture, phase % _TEXTURE_PERIOD]


def _texture_mask(texture: np.ndarray, u: np.ndarray, v: np.ndarray,
                  phase: np.ndarray) -> np.ndarray:
    """(n, H, W) bool mask of the dark texture pixels (plain, striped, checkered, dotted; v2).

    The pattern lives in the object's frame, offset by ``phase``, so it turns with the object.
    """
    mask = np.zeros(u.shape, dtype=bool)
    for t in (1, 2, 3):
        sel = np.flatnonzero(texture == t)
        if sel.size == 0:
            continue
        uu = u[sel] + phase[sel, 0, None, None]
        vv = v[sel] + phase[sel, 1, None, None]
        if t == 1:  # striped: diagonal bands of period 8
            m = np.mod(uu + vv, 8.0) < 4.0
        elif t == 2:  # checkered: 4-pixel squares
            m = (np.floor(uu / 4.0) + np.floor(vv / 4.0)) % 2 == 0
        else:  # dotted: discs every 5 pixels
            du, dv = np.mod(uu, 5.0) - 2.0, np.mod(vv, 5.0) - 2.0
            m = du * du + dv * dv <= 1.5
        mask[sel] = m
    return mask


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


def _speck_mask(specks: np.ndarray) -> np.ndarray:
    """(n, H, W) index of the speck covering each pixel (2×2 pixels each), -1 where none."""
    n, k = specks.shape[:2]
    col = np.floor(specks[..., 0]).astype(np.intp)
    row = np.floor(specks[..., 1]).astype(np.intp)
    out = np.full((n, IMAGE_SIZE, IMAGE_SIZE), -1, np.intp)
    img = np.broadcast_to(np.arange(n)[:, None], (n, k))
    which = np.broadcast_to(np.arange(k)[None], (n, k))
    present = specks[..., 2] > 0
    for dr in (0, 1):
        for dc in (0, 1):
            out[img[present], row[present] + dr, col[present] + dc] = which[present]
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[:, 1:, :] &= mask[:, :-1, :]
    inner[:, :-1, :] &= mask[:, 1:, :]
    inner[:, :, 1:] &= mask[:, :, :-1]
    inner[:, :, :-1] &= mask[:, :, 1:]
    return mask & ~inner


_BLOCK_MAP = ((_YY // 8) * 8 + _XX // 8).astype(np.uint8)  # 8×8-pixel block id of each pixel
_BG, _LIGHT, _DARK, _STAR, _SPECK = 0, 1, 2, 3, 4  # labels; specks 4..4+k-1, clutter after


def _pattern(kind: np.ndarray, grating: np.ndarray, amplitude: float,
             amp_max: float) -> np.ndarray:
    """(n, H, W) background pattern of each class: bare, waves, ribs or tiles.

    The per-image grating draws set the pattern's tilt (within ±15°), period and phase, and
    scale its amplitude between 0.6 and 1 of ``amplitude`` (``amp_max``: the grating's
    largest), so that only the kind of pattern, not its exact look, tells the class.
    """
    theta, period, phase, amp = (grating[:, i] for i in range(4))
    tilt = (theta / np.pi - 0.5) * np.deg2rad(30.0)
    cos, sin = np.cos(tilt)[:, None, None], np.sin(tilt)[:, None, None]
    along_y = (_YY[None] * cos + _XX[None] * sin)  # (n, H, W) rows, tilted
    along_x = (_XX[None] * cos - _YY[None] * sin)
    k = (2 * np.pi / period)[:, None, None]
    ph = phase[:, None, None]
    waves, ribs = np.sin(k * along_y + ph), np.sin(k * along_x + ph)
    # smooth, no edges; √2 gives the same RMS as the waves
    tiles = np.sqrt(2) * np.sin(k * along_y + ph) * np.sin(k * along_x + 2 * ph)
    kind = kind[:, None, None]
    wave = np.where(kind == 1, waves, np.where(kind == 2, ribs, np.where(kind == 3, tiles, 0.0)))
    scale = amplitude * (0.6 + 0.4 * np.clip(amp / max(amp_max, 1e-6), 0, 1))
    return (scale[:, None, None] * wave).astype(np.float32)


def _grating(grating: np.ndarray) -> np.ndarray:
    """(n, H, W) background grating, from separable sines (cheaper than one sine per pixel)."""
    theta, period, phase, amp = (grating[:, i] for i in range(4))
    kx = (2 * np.pi * np.cos(theta) / period)[:, None] * _XX[0][None]  # (n, W)
    ky = (2 * np.pi * np.sin(theta) / period)[:, None] * _YY[:, 0][None] + phase[:, None]  # (n, H)
    sx, cx, sy, cy = np.sin(kx), np.cos(kx), np.sin(ky), np.cos(ky)
    wave = sy[:, :, None] * cx[:, None, :] + cy[:, :, None] * sx[:, None, :]  # sin(kx + ky)
    return (amp[:, None, None] * wave).astype(np.float32)


def _render_chunk_v2(scenes: Scenes, rng: np.random.Generator) -> np.ndarray:
    """Draw a v2 chunk through a per-pixel label map and a per-image colour table.

    Labels: 0 background, 1/2 object light/dark (texture), 3 star, 4.. the specks, then the
    clutter blocks. One gather turns labels into lit colours; the (lit) grating is added to
    the background pixels and noise last, both in integers.
    """
    cfg, shift, n = scenes.config, scenes.shift, len(scenes)
    shape4 = (n, IMAGE_SIZE, IMAGE_SIZE, 3)
    if shift == "random":
        return rng.integers(0, 256, shape4, dtype=np.uint8)
    u, v = _object_frame(scenes)
    mask = _shape_mask(scenes.shape, u, v, scenes.r)
    stars = _star_mask(scenes.star_slots)
    k = scenes.specks.shape[1]
    clutter = shift == "clutter"
    table = np.zeros((n, _SPECK + k + 64 * clutter, 3), np.float32)
    wave = None
    if shift == "sketch":  # black outlines on a white page: no colour, texture or lighting
        table[:, _BG], table[:, _LIGHT:] = 235.0, 20.0
        labels = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        labels[_outline(mask)] = _LIGHT
    else:
        palette = np.asarray(cfg.shift_palette if shift == "palette" else cfg.palette,
                             np.float32)
        bg_pal = np.asarray(cfg.shift_background_palette if shift == "palette"
                            else cfg.background_palette, np.float32)
        jitter = cfg.shift_color_jitter if shift == "palette" else cfg.color_jitter
        bj = cfg.background_jitter
        if cfg.background_style == "pattern":
            lo, hi = cfg.shift_background_range if shift == "palette" else cfg.background_range
            tint = cfg.background_tint
            table[:, _BG] = (rng.uniform(lo, hi, (n, 1))
                             + rng.uniform(-tint, tint, (n, 3))).astype(np.float32)
        else:
            table[:, _BG] = (bg_pal[scenes.background]
                             + rng.uniform(-bj, bj, (n, 1)).astype(np.float32))
        color = palette[scenes.color] + rng.uniform(-jitter, jitter, (n, 3)).astype(np.float32)
        table[:, _LIGHT] = color
        table[:, _DARK] = color * np.float32(cfg.texture_shade)
        table[:, _STAR] = 240.0
        table[:, _SPECK:_SPECK + k] = scenes.specks[..., 2:3]
        speck = _speck_mask(scenes.specks)
        labels = np.where(speck >= 0, speck + _SPECK, _BG).astype(np.uint8)
        if clutter:  # 8×8-pixel blocks of random colour, half-blended with the background
            blocks = rng.integers(0, 256, (n, 64, 3)).astype(np.float32)
            table[:, _SPECK + k:] = 0.5 * blocks + 0.5 * table[:, _BG:_BG + 1]
            labels = np.where(labels == _BG, _BLOCK_MAP + np.uint8(_SPECK + k), labels)
        if cfg.background_style == "pattern":  # the class pattern, under clutter too
            wave = _pattern(scenes.background, scenes.grating, cfg.pattern_amplitude,
                            cfg.grating_amplitude)
        elif not clutter:
            wave = _grating(scenes.grating)
        pattern = _texture_mask(scenes.texture, u, v, scenes.phase)
        labels = np.where(mask, pattern.view(np.uint8) + np.uint8(_LIGHT), labels)
        light = scenes.light
        if shift == "dark":
            light = rng.uniform(*cfg.shift_light_range, n).astype(np.float32)
        table *= light[:, None, None]
        if wave is not None:
            wave *= light[:, None, None]
        if shift == "dark":
            table += rng.uniform(-cfg.shift_cast, cfg.shift_cast, (n, 1, 3)).astype(np.float32)
    labels[stars] = _STAR
    table = np.clip(np.rint(table), 0, 255).astype(np.int16)
    flat = labels.astype(np.intp) + (np.arange(n) * table.shape[1])[:, None, None]
    img = table.reshape(-1, 3)[flat]  # (n, H, W, 3) int16
    if wave is not None:
        behind = labels == _BG if not clutter else (labels == _BG) | (labels >= _SPECK + k)
        img += np.where(behind, np.rint(wave), 0).astype(np.int16)[..., None]
    std = cfg.shift_noise_std if shift == "noise" else cfg.noise_std
    half_width = int(round(std * np.sqrt(3.0)))  # uniform noise with standard deviation ≈ std
    if half_width > 0:
        img += rng.integers(-half_width, half_width + 1, shape4, dtype=np.int16)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)




def _render_chunk_v1(scenes: Scenes, rng: np.random.Generator) -> np.ndarray:
    """Draw a v1 chunk through a per-pixel label map and a per-image colour table.

    Labels: 0 background, 1/2 object light/dark (texture), 3 star, 4 + b the clutter block b.
    One gather turns labels into colours; noise is added last. (Frozen: the order of every
    random draw fixes the pixels of the shipped checkpoint's datasets.)
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
    bj = cfg.background_jitter
    table = np.zeros((n, 4 + 64 * (shift == "clutter"), 3), np.float32)
    if sketch:
        table[:, 0], table[:, 1:] = 235.0, 20.0
    else:
        table[:, 0] = bg_pal[scenes.background] + rng.uniform(-bj, bj, (n, 1)).astype(np.float32)
        table[:, 3] = 240.0
    if shift == "clutter":  # 8×8-pixel blocks of random colour, half-blended with the background
        blocks = rng.integers(0, 256, (n, 64, 3)).astype(np.float32)
        table[:, 4:] = 0.5 * blocks + 0.5 * table[:, :1]
        labels = np.broadcast_to(_BLOCK_MAP + np.uint8(4), (n, IMAGE_SIZE, IMAGE_SIZE)).copy()
    else:
        labels = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    u, v = _object_frame(scenes)
    mask = _shape_mask(scenes.shape, u, v, scenes.r)
    if sketch:
        labels[_outline(mask)] = 1
    else:
        color = palette[scenes.color] + rng.uniform(-jitter, jitter, (n, 3)).astype(np.float32)
        table[:, 1] = color
        table[:, 2] = color * np.float32(cfg.texture_shade)
        pattern = _texture_mask_v1(scenes.texture, scenes.phase)
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


def _render_chunk(scenes: Scenes, rng: np.random.Generator) -> np.ndarray:
    return (_render_chunk_v1 if scenes.config.version == 1 else _render_chunk_v2)(scenes, rng)


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
