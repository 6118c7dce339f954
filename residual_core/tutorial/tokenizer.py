"""Word-level tokenizer over the tutorial world's vocabulary, callable like open_clip's."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["PAD", "SOT", "EOT", "UnknownWordError", "WordTokenizer", "split_words"]

PAD = "<pad>"
SOT = "<start_of_text>"
EOT = "<end_of_text>"

# Lower-case words and numbers; everything else (spaces, punctuation, quotes) separates words.
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


class UnknownWordError(KeyError):
    """A text holds words the tokenizer's vocabulary does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def split_words(text: str) -> list[str]:
    """Lower-case a text and split it into words; punctuation only separates words.

    Args:
        text: Any text, e.g. ``'A photo of a "red" circle.'``.

    Returns:
        The words, e.g. ``['a', 'photo', 'of', 'a', 'red', 'circle']``.
    """
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps texts to fixed-length id rows: ``[SOT, w_1, ..., w_n, EOT, PAD, ...]``.

    Ids: ``PAD = 0``, ``SOT = 1``, the words ``2 .. V + 1`` (in sorted order) and ``EOT = V + 2``,
    the largest id, so open_clip's ``'argmax'`` text pooling (which takes the position of the
    highest id) pools at EOT, exactly as with open_clip's BPE tokenizer. Texts longer than the
    context are truncated, keeping EOT last (as open_clip does).

    Args:
        vocabulary: Every word the texts may use (duplicates and order do not matter).
        context_length: Length of every id row, SOT and EOT included.

    Example:
        >>> tok = WordTokenizer(["a", "red", "circle"], context_length=8)
        >>> tok(["a red circle"]).shape
        torch.Size([1, 8])
    """

    def __init__(self, vocabulary: Iterable[str], context_length: int = 32):
        words = sorted({w for word in vocabulary for w in split_words(word)})
        if not words:
            raise ValueError("empty vocabulary")
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (SOT, word, EOT), got {context_length}")
        self.words: list[str] = words
        self.context_length = context_length
        self.pad_id, self.sot_id, self.eot_id = 0, 1, len(words) + 2
        self._ids = {w: i + 2 for i, w in enumerate(words)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (the text tower's embedding rows)."""
        return len(self.words) + 3

    def encode(self, text: str) -> list[int]:
        """Word ids of one text, without SOT/EOT.

        Raises:
            UnknownWordError: Naming every word of ``text`` that is not in the vocabulary.
        """
        words = split_words(text)
        unknown = sorted({w for w in words if w not in self._ids})
        if unknown:
            raise UnknownWordError(
                f"words not in the tutorial tokenizer's vocabulary ({len(self.words)} words): "
                f"{unknown} in text {text!r}"
            )
        return [self._ids[w] for w in words]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Words of an id row, specials and padding dropped."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return " ".join(self.words[i - 2] for i in ids if 2 <= i < self.eot_id)

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> Int[Tensor, "batch context"]:
        """Tokenize like ``open_clip.get_tokenizer(...)(texts)``.

        Args:
            texts: One text or a list of texts.
            context_length: Override the row length (default: the tokenizer's).

        Returns:
            Long tensor of ids, one row per text.

        Raises:
            UnknownWordError: If a text holds a word outside the vocabulary.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        n_ctx = context_length or self.context_length
        out = torch.full((len(texts), n_ctx), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text)[: n_ctx - 2], self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def __repr__(self) -> str:
        return (f"WordTokenizer(vocab_size={self.vocab_size}, "
                f"context_length={self.context_length})")
