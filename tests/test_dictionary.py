"""The shipped text dictionaries: reproducible, unique, tagged, and in the right vocabulary."""

from __future__ import annotations

import pytest

from residual_core.core.dictionary import to_tsv
from residual_core.data.dictionaries import (
    GENERAL_PATH,
    general_dictionary,
    load_dictionary,
    tutorial_dictionary,
)
from residual_core.tutorial.world import ATTRIBUTES, vocabulary


def test_general_dictionary_file_matches_generator():
    assert GENERAL_PATH.read_text() == to_tsv(general_dictionary()), (
        "regenerate with `python -m residual_core.data.dictionaries`"
    )
    d = load_dictionary("general")
    assert 3000 <= len(d) <= 6000
    assert len(set(d.texts)) == len(d)
    assert {"color", "texture", "object", "scene", "number"} <= set(d.family_names())


def test_tutorial_dictionary_uses_only_world_words_and_names_every_value():
    d = tutorial_dictionary()
    vocab = set(vocabulary())
    oov = {w for t in d.texts for w in t.split() if w not in vocab}
    assert not oov, f"words the tiny CLIP's tokenizer does not know: {sorted(oov)}"
    words = {w for t in d.texts for w in t.split()}
    for family, values in ATTRIBUTES.items():
        missing = [v for v in values if v not in words]
        assert not missing, f"{family}: {missing} never appear"
    assert len(set(d.texts)) == len(d) >= 500


def test_families_are_consistent_with_the_words():
    d = tutorial_dictionary()
    colors = set(ATTRIBUTES["color"])
    for text, fams in zip(d.texts, d.families, strict=True):
        has_color_word = any(w in colors for w in text.split())
        assert has_color_word == ("color" in fams), text
    positions = set(ATTRIBUTES["position"])
    for text, fams in zip(d.texts, d.families, strict=True):
        assert any(w in positions for w in text.split()) == ("position" in fams), text
    assert set(d.family_names()) == set(ATTRIBUTES)


def test_unknown_dictionary_lists_valid_names():
    with pytest.raises(ValueError, match=r"valid: \['general', 'tutorial', 'tutorial-v3'\]"):
        load_dictionary("imagenet")


def test_v3_tutorial_dictionary_speaks_of_patterns_in_the_v3_vocabulary():
    from residual_core.tutorial.world import PATTERN_WORLD

    d = load_dictionary("tutorial-v3")
    vocab = set(vocabulary(PATTERN_WORLD))
    assert not {w for t in d.texts for w in t.split() if w not in vocab}
    background = [t for t, f in zip(d.texts, d.families, strict=True) if "background" in f]
    assert background and all(any(w in t.split() for w in PATTERN_WORLD.backgrounds)
                              for t in background)
    assert not any("navy" in t.split() for t in background)
