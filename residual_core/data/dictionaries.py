"""The text dictionaries: short image descriptions tagged with what they describe.

The authors' dictionary is not public, so the project generates its own, deterministically,
from attribute vocabularies and templates. Every entry carries the attribute *families* it
names (``color``, ``shape``, ``texture``, ...), so a chapter can check whether the texts chosen
for a head name the attribute that a probe finds in it.

- :func:`tutorial_dictionary`: descriptions of the tutorial world, written only with words of
  its vocabulary (the tiny CLIP's tokenizer knows no other), ~600 entries.
- :func:`general_dictionary`: ~4k descriptions of natural images for the paper's models
  (colours, textures, shapes, objects, scenes, styles, counts, materials, lighting, ...), also
  shipped as ``residual_core/data/general_dictionary.tsv`` for inspection; a test keeps the two
  identical (regenerate with ``python -m residual_core.data.dictionaries``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from residual_core.core.dictionary import TextDictionary, read_tsv, to_tsv

__all__ = ["DICTIONARIES", "general_dictionary", "load_dictionary", "tutorial_dictionary"]

GENERAL_PATH = Path(__file__).parent / "general_dictionary.tsv"
DICTIONARIES = ("general", "tutorial", "tutorial-v3")
"""Names :func:`load_dictionary` knows."""


def _build(entries: list[tuple[str, tuple[str, ...]]]) -> TextDictionary:
    seen: dict[str, set[str]] = {}
    for text, fams in entries:
        text = " ".join(text.split())
        seen.setdefault(text, set()).update(fams)
    texts = tuple(seen)
    return TextDictionary(texts, tuple(tuple(sorted(seen[t])) for t in texts))


def tutorial_dictionary(config=None) -> TextDictionary:
    """Descriptions of the tutorial world in its own vocabulary.

    Args:
        config: A ``WorldConfig`` (default: the default world).
    """
    from residual_core.tutorial.world import DEFAULT_WORLD

    c = DEFAULT_WORLD if config is None else config
    e: list[tuple[str, tuple[str, ...]]] = []
    lead = ("a", "a photo of a", "a picture of a")
    wheres = [(f"at the {p}", ("position",)) for p in c.positions] + [("", ())]
    for (where, pos), pre in itertools.product(wheres, lead):
        for shape in c.shapes:
            e.append((f"{pre} {shape} {where}", ("shape", *pos)))
        for word, fam in [(w, "color") for w in c.colors] + [(w, "size") for w in c.sizes] + [
            (w, "texture") for w in c.textures
        ]:
            e.append((f"{pre} {word} object {where}", (fam, *pos)))
        if where:
            e.append((f"{pre} object {where}", pos))
    for color, shape in itertools.product(c.colors, c.shapes):
        e.append((f"a {color} {shape}", ("color", "shape")))
    for size, shape in itertools.product(c.sizes, c.shapes):
        e.append((f"a {size} {shape}", ("size", "shape")))
    for texture, shape in itertools.product(c.textures, c.shapes):
        e.append((f"a {texture} {shape}", ("texture", "shape")))
    for size, color in itertools.product(c.sizes, c.colors):
        e.append((f"a {size} {color} object", ("size", "color")))
    for texture, color in itertools.product(c.textures, c.colors):
        e.append((f"a {texture} {color} object", ("texture", "color")))
    for size, color, shape in itertools.product(c.sizes, c.colors, c.shapes):
        e.append((f"a {size} {color} {shape}", ("size", "color", "shape")))
    for texture, color, shape in itertools.product(c.textures, c.colors, c.shapes):
        e.append((f"a {texture} {color} {shape}", ("texture", "color", "shape")))
    for bg in c.backgrounds:
        for t in ("a photo on a {} background", "a object on a {} background",
                  "a picture on a {} background", "a {} background"):
            e.append((t.format(bg), ("background",)))
        for shape in c.shapes:
            e.append((f"a {shape} on a {bg} background", ("shape", "background")))
    for count in c.counts:
        noun = "star" if count == "one" else "stars"
        for t in ("a photo with {} {}", "a picture with {} {}", "a object with {} {}", "{} {}"):
            e.append((t.format(count, noun), ("count",)))
    for generic in ("a photo", "a picture", "a object", "a photo of a object",
                    "a picture of a object"):
        e.append((generic, ()))
    return _build(e)


_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
           "white", "gray", "golden", "silver", "beige", "turquoise", "navy", "maroon", "teal")
_TEXTURES = ("striped", "checkered", "dotted", "spotted", "floral", "plaid", "wooden", "metallic",
             "furry", "woolly", "glossy", "matte", "rough", "smooth", "wrinkled", "cracked",
             "knitted", "marbled", "rusty", "scaly", "zigzag", "honeycomb", "braided", "porous")
_SHAPES = ("circle", "square", "triangle", "rectangle", "star", "heart", "diamond", "oval",
           "hexagon", "spiral", "cross", "arrow", "crescent", "ring", "cube", "sphere")
_OBJECTS = (
    "dog", "cat", "horse", "cow", "sheep", "bird", "eagle", "owl", "fish", "shark", "frog",
    "snake", "lizard", "turtle", "butterfly", "bee", "spider", "elephant", "lion", "tiger",
    "bear", "monkey", "deer", "rabbit", "squirrel", "car", "truck", "bus", "bicycle",
    "motorcycle", "airplane", "helicopter", "boat", "ship", "train", "tractor", "tank",
    "rocket", "chair", "table", "sofa", "bed", "lamp", "clock", "vase", "bottle", "cup",
    "plate", "bowl", "knife", "fork", "spoon", "laptop", "keyboard", "phone", "camera",
    "television", "guitar", "piano", "violin", "drum", "book", "pen", "backpack", "umbrella",
    "shoe", "hat", "shirt", "dress", "jacket", "glove", "watch", "ring", "necklace", "apple",
    "banana", "orange", "strawberry", "grape", "lemon", "pizza", "sandwich", "cake", "bread",
    "cheese", "salad", "soup", "tree", "flower", "rose", "sunflower", "mushroom", "cactus",
    "leaf", "house", "castle", "church", "bridge", "tower", "skyscraper", "tent", "road",
    "street sign", "stop sign", "traffic light", "fence", "door", "window", "stairs", "ball",
    "kite", "balloon", "toy", "teddy bear", "robot", "person", "man", "woman", "child", "baby",
    "face", "hand", "soldier", "athlete", "crowd", "digit", "number", "letter", "word",
)
_SCENES = ("a beach", "a forest", "a desert", "a mountain", "a lake", "a river", "the ocean",
           "a city street", "a highway", "a farm", "a field", "a garden", "a park", "a kitchen",
           "a bedroom", "a living room", "an office", "a classroom", "a library", "a restaurant",
           "a supermarket", "a stadium", "an airport", "a train station", "a harbor",
           "a parking lot", "a bridge", "a cave", "a jungle", "a snowy field", "a swamp",
           "a canyon", "a waterfall", "a volcano", "a glacier", "a meadow", "a vineyard",
           "a factory", "a hospital", "a museum", "a church", "a castle", "a playground",
           "a residential area", "an industrial area", "a river bank", "farmland from above",
           "a harbor from above", "a forest from above", "a city from above")
_STYLES = ("a photo of", "a close-up photo of", "a blurry photo of", "a dark photo of",
           "a bright photo of", "a black and white photo of", "a sketch of", "a drawing of",
           "a painting of", "a cartoon of", "a pixelated photo of", "a low resolution photo of",
           "a 3d render of", "an aerial photo of", "a satellite image of", "a tattoo of",
           "an origami", "a plastic", "a toy", "a sculpture of", "a graffiti of",
           "an embroidery of", "a jpeg corrupted photo of", "a cropped photo of",
           "a rendition of", "a doodle of")
_COUNTS = ("one", "two", "three", "four", "five", "many", "a few", "several", "a pair of",
           "a group of", "a crowd of", "a row of")
_LIGHT = ("at night", "at sunset", "at sunrise", "in the fog", "in the rain", "in the snow",
          "under bright sunlight", "in the shade", "in low light", "with a flash",
          "backlit", "under neon lights")
_MATERIALS = ("wood", "metal", "glass", "plastic", "stone", "paper", "fabric", "leather",
              "ceramic", "concrete", "gold", "ice")
_POSITIONS = ("in the center", "on the left", "on the right", "at the top", "at the bottom",
              "in the corner", "in the background", "in the foreground")
_NUMBERS = tuple(str(i) for i in range(10)) + ("zero", "one", "two", "three", "four", "five",
                                               "six", "seven", "eight", "nine")


def _plural(noun: str) -> str:
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return {"man": "men", "woman": "women", "child": "children", "person": "people",
            "mouse": "mice", "knife": "knives", "leaf": "leaves", "sheep": "sheep",
            "fish": "fish", "deer": "deer"}.get(noun, noun + "s")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def general_dictionary() -> TextDictionary:
    """About 4k natural-image descriptions for the paper's models (deterministic)."""
    e: list[tuple[str, tuple[str, ...]]] = []
    for obj in _OBJECTS:
        e.append((f"a photo of {_a(obj)}", ("object",)))
        e.append((_a(obj), ("object",)))
    for color in _COLORS:
        e += [(f"a {color} object", ("color",)), (f"the color {color}", ("color",)),
              (f"a photo with {color} tones", ("color",)), (f"{color}", ("color",))]
    for texture in _TEXTURES:
        e += [(f"a {texture} pattern", ("texture",)), (f"a {texture} texture", ("texture",)),
              (f"a {texture} surface", ("texture",))]
    for shape in _SHAPES:
        e += [(f"{_a(shape)} shape", ("shape",)), (f"a drawing of {_a(shape)}", ("shape",))]
    for scene in _SCENES:
        e += [(f"a photo of {scene}", ("scene",)), (f"a photo taken in {scene}", ("scene",))]
    for style in _STYLES:
        e += [(f"{style} an object", ("style",)), (f"{style} a scene", ("style",))]
    for light in _LIGHT:
        e += [(f"a photo taken {light}", ("lighting",)), (f"a scene {light}", ("lighting",))]
    for material in _MATERIALS:
        e += [(f"an object made of {material}", ("material",)),
              (f"a {material} surface", ("material", "texture"))]
    for pos in _POSITIONS:
        e.append((f"an object {pos}", ("position",)))
    for number in _NUMBERS:
        e += [(f'a photo of the number: "{number}"', ("number",)),
              (f"the digit {number}", ("number",)), (f"a street number {number}", ("number",))]
    for count, obj in itertools.product(_COUNTS, _OBJECTS[::4]):
        e.append((f"{count} {_plural(obj)}", ("count", "object")))
    for color, obj in itertools.product(_COLORS, _OBJECTS[::3]):
        e.append((f"{_a(color)} {obj}", ("color", "object")))
    for texture, obj in itertools.product(_TEXTURES, _OBJECTS[::6]):
        e.append((f"{_a(texture)} {obj}", ("texture", "object")))
    for style, obj in itertools.product(_STYLES, _OBJECTS[::5]):
        e.append((f"{style} {_a(obj)}", ("style", "object")))
    for obj, scene in itertools.product(_OBJECTS[::7], _SCENES[::2]):
        e.append((f"{_a(obj)} in {scene}", ("object", "scene")))
    for obj, light in itertools.product(_OBJECTS[::9], _LIGHT):
        e.append((f"{_a(obj)} {light}", ("object", "lighting")))
    for obj, pos in itertools.product(_OBJECTS[::8], _POSITIONS):
        e.append((f"{_a(obj)} {pos}", ("object", "position")))
    for color, shape in itertools.product(_COLORS, _SHAPES):
        e.append((f"{_a(color)} {shape}", ("color", "shape")))
    return _build(e)


def load_dictionary(name: str) -> TextDictionary:
    """A dictionary by name: ``"tutorial"``, ``"tutorial-v3"`` or ``"general"``.

    ``"tutorial-v3"`` is the tutorial dictionary in the v3 world's words (pattern backgrounds).

    Raises:
        ValueError: For another name, listing the valid ones.
    """
    if name == "tutorial":
        return tutorial_dictionary()
    if name == "tutorial-v3":  # the v3 world's background words (patterns, not colours)
        from residual_core.tutorial.world import PATTERN_WORLD

        return tutorial_dictionary(PATTERN_WORLD)
    if name == "general":
        return read_tsv(GENERAL_PATH)
    raise ValueError(f"unknown dictionary {name!r}; valid: {list(DICTIONARIES)}")


if __name__ == "__main__":
    GENERAL_PATH.parent.mkdir(exist_ok=True)
    GENERAL_PATH.write_text(to_tsv(general_dictionary()))
    print(f"wrote {len(general_dictionary())} texts to {GENERAL_PATH}")
