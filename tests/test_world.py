"""Tests of the tutorial world: determinism, balance, captions, and that pixels show attributes."""

import re

import numpy as np
import pytest

from residual_core.tutorial import world as W

N = 4000


@pytest.fixture(scope="module")
def scenes():
    return W.sample_scenes(N, seed=11)


@pytest.fixture(scope="module")
def clean():
    """Noise-free renders of 600 scenes, so pixel tests can compare exact colours."""
    cfg = W.DEFAULT_WORLD.replace(noise_std=0.0)
    s = W.sample_scenes(600, seed=5, config=cfg)
    return s, W.render(s, seed=6)


def _tol(p: float, n: int, sigmas: float = 5.0) -> float:
    return sigmas * np.sqrt(p * (1 - p) / n) + 1e-3


# ---------------------------------------------------------------- determinism


def test_same_seed_same_scenes_pixels_and_captions():
    a, b = W.sample_scenes(64, seed=3), W.sample_scenes(64, seed=3)
    np.testing.assert_array_equal(a.keys(), b.keys())
    np.testing.assert_array_equal(W.render(a, seed=4), W.render(b, seed=4))
    assert W.captions(a, seed=5) == W.captions(b, seed=5)


def test_different_seeds_differ():
    a, b = W.sample_scenes(64, seed=3), W.sample_scenes(64, seed=4)
    assert (a.keys() != b.keys()).any(axis=1).all()
    img_a, img_a2 = W.render(a, seed=4), W.render(a, seed=5)
    assert not np.array_equal(img_a, img_a2)  # render seed changes noise/jitter
    assert W.captions(a, seed=5) != W.captions(a, seed=6)


def test_render_is_chunk_prefix_stable():
    s = W.sample_scenes(300, seed=1)
    full = W.render(s, seed=2)
    assert full.shape == (300, 64, 64, 3) and full.dtype == np.uint8
    np.testing.assert_array_equal(full[:256], W.render(s.subset(slice(0, 256)), seed=2))


def test_caption_stream_is_deterministic_and_shaped():
    a, b = W.caption_stream(8, seed=1), W.caption_stream(8, seed=1)
    for _ in range(2):
        (ia, ca), (ib, cb) = next(a), next(b)
        np.testing.assert_array_equal(ia, ib)
        assert ca == cb
        assert ia.shape == (8, 64, 64, 3) and ia.dtype == np.uint8 and len(ca) == 8
    first, second = next(W.caption_stream(8, seed=1)), next(a)
    assert not np.array_equal(first[0], second[0])


# ---------------------------------------------------------------- balance


def test_attribute_values_are_balanced(scenes):
    for attr, values in W.ATTRIBUTES.items():
        freq = np.bincount(getattr(scenes, attr), minlength=len(values)) / N
        p = 1 / len(values)
        assert np.abs(freq - p).max() < _tol(p, N), (attr, freq)


def test_scene_table_layout(scenes):
    table = scenes.attributes()
    assert list(table) == list(W.ATTRIBUTES)
    assert all(v.shape == (N,) for v in table.values())
    assert scenes.words("color")[:3] == [W.ATTRIBUTES["color"][i] for i in table["color"][:3]]
    sub = scenes.subset(np.arange(10))
    assert len(sub) == 10 and sub.shift is None
    np.testing.assert_array_equal(sub.keys(), scenes.keys()[:10])


def test_geometry_matches_attributes(scenes):
    cfg = W.DEFAULT_WORLD
    np.testing.assert_array_equal(scenes.x, np.asarray(cfg.x_centres)[scenes.position])
    np.testing.assert_array_equal(scenes.r, np.asarray(cfg.radii)[scenes.size])
    # on the patch grid: centres on multiples of 8, every grid row used
    assert (scenes.x % 8 == 0).all() and (scenes.y % 8 == 0).all()
    assert set(scenes.y) == set(cfg.y_rows)
    np.testing.assert_array_equal(scenes.star_slots.sum(1), scenes.count + 1)
    # the object never reaches the star strip or the image border
    assert (scenes.y + scenes.r < 56).all() and (scenes.y - scenes.r >= 0).all()
    assert (scenes.x - scenes.r >= 0).all() and (scenes.x + scenes.r < 64).all()


# ---------------------------------------------------------------- captions


def test_captions_use_only_vocabulary_words_and_stay_short(scenes):
    vocab = set(W.vocabulary())
    caps = W.captions(scenes, seed=1)
    assert len(caps) == N
    words = [c.split(" ") for c in caps]
    assert all(w and set(w) <= vocab for w in words)
    assert max(len(w) for w in words) == W.max_caption_words()
    assert np.mean([len(w) for w in words]) < 12
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)*", c) for c in caps)


def test_vocabulary_covers_classnames_and_templates():
    vocab = W.vocabulary()
    assert vocab == sorted(set(vocab))
    for values in W.ATTRIBUTES.values():
        assert all(set(v.split()) <= set(vocab) for v in values)
    for task, templates in W.TEMPLATES.items():
        assert templates, task
        for t in templates:
            assert t.count("{}") == 1
            assert set(t.replace("{}", " ").split()) <= set(vocab), t


def test_mention_frequencies_match_config(scenes):
    _, mentions = W.captions(scenes, seed=2, return_mentions=True)
    rates = W.mention_rates()
    assert set(mentions) == set(W.ATTRIBUTES)
    for attr, flags in mentions.items():
        assert abs(flags.mean() - rates[attr]) < _tol(rates[attr], N), (attr, flags.mean())
    # the graded design: rarely captioned attributes are rarer than shape and colour
    assert rates["count"] < rates["texture"] < rates["size"] < rates["color"] < rates["shape"]


def test_captions_state_the_true_values_of_mentioned_attributes(scenes):
    caps, mentions = W.captions(scenes, seed=3, return_mentions=True)
    for i in range(600):
        words = caps[i].split()
        for family in ("shape", "color", "size", "texture"):
            said = [w for w in words if w in W.ATTRIBUTES[family]]
            value = W.ATTRIBUTES[family][getattr(scenes, family)[i]]
            truth = [value] if mentions[family][i] else []
            assert said == truth, (caps[i], family)
        assert ("object" in words) != mentions["shape"][i]
        pos = W.ATTRIBUTES["position"][scenes.position[i]]
        assert (f"at the {pos}" in caps[i]) == mentions["position"][i], caps[i]
        assert ("at" in words) == mentions["position"][i]
        bg = W.ATTRIBUTES["background"][scenes.background[i]]
        assert (f"on a {bg} background" in caps[i]) == mentions["background"][i]
        assert ("background" in words) == mentions["background"][i]
        count = W.ATTRIBUTES["count"][scenes.count[i]]
        assert (f"with {count} star" in caps[i]) == mentions["count"][i], caps[i]


def test_captions_open_with_every_prefix(scenes):
    caps = W.captions(scenes.subset(slice(0, 600)), seed=4)
    openings = {p: sum(c.startswith(p + "a ") for c in caps) for p in W.PREFIXES if p}
    plain = sum(not c.startswith(tuple(openings)) for c in caps)
    assert min(openings.values()) > 120 and plain > 120, (openings, plain)


def test_caption_error_replaces_mentioned_values(scenes):
    cfg = W.DEFAULT_WORLD.replace(caption_error=1.0, mention={"background": 1.0})
    caps = W.captions(scenes.subset(slice(0, 300)), seed=1, config=cfg)
    for i, c in enumerate(caps):
        true_bg = W.ATTRIBUTES["background"][scenes.background[i]]
        assert f"on a {true_bg} background" not in c
        assert "background" in c


def test_config_validation():
    with pytest.raises(ValueError, match="unknown attributes"):
        W.DEFAULT_WORLD.replace(mention={"smell": 0.5})
    with pytest.raises(ValueError, match="radii"):
        W.DEFAULT_WORLD.replace(radii=(3, 4))
    with pytest.raises(ValueError, match="x_centres"):
        W.DEFAULT_WORLD.replace(x_centres=(16, 48))
    with pytest.raises(ValueError, match="y_rows"):
        W.DEFAULT_WORLD.replace(y_rows=(16, 48))
    with pytest.raises(ValueError, match="valid: None, noise"):
        W.sample_scenes(4, seed=0, shift="blur")
    assert hash(W.DEFAULT_WORLD) == hash(W.WorldConfig())


# ---------------------------------------------------------------- pixels show attributes


def _object_mask(img: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Pixels of the object area (above the star strip) that differ from the background."""
    return np.abs(img[: W.IMAGE_SIZE - 8].astype(int) - bg.astype(int)).sum(-1) > 0


def test_pixels_show_colour_background_texture_size_and_position(clean):
    s, imgs = clean
    cfg = s.config
    pal = np.asarray(cfg.palette)
    bg_pal = np.asarray(cfg.background_palette)
    areas = np.zeros(len(s))
    for i in range(len(s)):
        img = imgs[i]
        bg = img[W.IMAGE_SIZE - 7, 0]  # star strip, between stars: always background
        assert np.abs(bg_pal - bg.astype(int)).sum(1).argmin() == s.background[i]
        mask = _object_mask(img, bg)
        areas[i] = mask.sum()
        pixels = img[: W.IMAGE_SIZE - 8][mask].astype(int)
        brightest = pixels[pixels.sum(1).argmax()]
        assert np.abs(pal - brightest).sum(1).argmin() == s.color[i], i
        n_colours = len(np.unique(pixels, axis=0))
        if s.texture[i] == 0:
            assert n_colours == 1, i
        elif s.size[i] > 0:
            assert n_colours >= 2, (i, s.texture[i])
        xs = np.nonzero(mask)[1]
        centre = (xs.min() + xs.max()) / 2
        assert np.abs(np.asarray(cfg.x_centres) - centre).argmin() == s.position[i], i
    for sh in range(5):
        means = [areas[(s.size == k) & (s.shape == sh)].mean() for k in range(3)]
        assert means[0] < means[1] < means[2], (sh, means)
        small = areas[(s.size == 0) & (s.shape == sh)]
        large = areas[(s.size == 2) & (s.shape == sh)]
        assert small.max() < large.min()


def test_pixels_show_stars(clean):
    s, imgs = clean
    slot_x = np.arange(8) * 8 + 4
    lit = (imgs[:, W.IMAGE_SIZE - 4, slot_x] == 240).all(-1)
    np.testing.assert_array_equal(lit, s.star_slots)
    np.testing.assert_array_equal(lit.sum(1), s.count + 1)


def test_pixels_show_shape(clean):
    s, imgs = clean
    fill = {k: [] for k in range(5)}
    top_heavy = []
    for i in range(len(s)):
        bg = imgs[i, W.IMAGE_SIZE - 7, 0]
        mask = _object_mask(imgs[i], bg)
        ys, xs = np.nonzero(mask)
        box = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
        fill[s.shape[i]].append(mask.sum() / box)
        if s.shape[i] == 2:  # triangle: wider at the bottom
            rows = mask.sum(1)[ys.min() : ys.max() + 1]
            top_heavy.append(rows[: len(rows) // 2].sum() < rows[len(rows) // 2 :].sum())
    mean = {k: np.mean(v) for k, v in fill.items()}
    assert mean[1] > 0.95  # square fills its box
    assert 0.72 < mean[0] < 0.88  # circle ~ pi/4
    assert max(mean[2], mean[3], mean[4]) < 0.66  # triangle, diamond, cross
    assert all(top_heavy)


# ---------------------------------------------------------------- shifts


def test_shifts_change_the_images_as_intended():
    base_s = W.sample_scenes(200, seed=9)
    base = W.render(base_s, seed=1).astype(float)
    out = {}
    for shift in W.SHIFTS:
        s = W.sample_scenes(200, seed=9, shift=shift)
        assert s.shift == shift
        np.testing.assert_array_equal(s.keys(), base_s.keys())  # same scenes, new look
        out[shift] = W.render(s, seed=1).astype(float)
        assert np.abs(out[shift] - base).mean() > 5, shift
    strip = (slice(None), slice(W.IMAGE_SIZE - 8, W.IMAGE_SIZE - 6), slice(0, 2))
    # noise: the background strip varies much more than in the base world
    assert out["noise"][strip].std(axis=(1, 2)).mean() > 4 * base[strip].std(axis=(1, 2)).mean()
    # clutter: backgrounds are no longer flat colours
    assert out["clutter"].std(axis=(1, 2)).mean() > base.std(axis=(1, 2)).mean()
    # sketch: a white page with dark lines
    assert out["sketch"].mean() > 200 and base.mean() < 120
    # random: uniform noise with the moments of U{0..255}
    assert abs(out["random"].mean() - 127.5) < 1 and abs(out["random"].std() - 73.9) < 1
    # palette: plain objects' colours are nearest to the shifted palette
    cfg = W.DEFAULT_WORLD
    s = W.sample_scenes(200, seed=9, shift="palette", config=cfg.replace(noise_std=0.0))
    img = W.render(s, seed=1)
    both = np.asarray(cfg.palette + cfg.shift_palette)
    hits = []
    for i in np.flatnonzero(s.texture == 0)[:40]:
        c = img[i, s.y[i], s.x[i]].astype(int)
        hits.append(np.abs(both - c).sum(1).argmin() >= len(cfg.palette))
    assert np.mean(hits) > 0.9


def test_attribute_table_matches_config():
    rows = W.attribute_table()
    assert [r["attribute"] for r in rows] == list(W.ATTRIBUTES)
    rates = W.mention_rates()
    for r in rows:
        assert r["classes"] == len(W.ATTRIBUTES[r["attribute"]]) == len(r["values"])
        assert r["caption_rate"] == rates[r["attribute"]] == r["p_mention"]
