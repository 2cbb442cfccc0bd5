"""A word-level tokenizer for the tiny-model spec mode: words, single digits, punctuation, spaces.

Numbers are split into digits so any value a spec holds can be written; runs of whitespace
are tokens too, so decode(encode(text)) == text for every text made of known tokens.
Special ids: pad 0, bos 1, eos 2, unk 3.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Iterable

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_TOKEN = re.compile(r"[A-Za-z_]+|\d|[^\w\s]|\s+")
_BASE = [str(d) for d in range(10)] + list(".-+=:,;()[]/%<>*'\"!?#|") + [" ", "\n", "  ", "e", "inf", "nan"]


def split_words(text: str) -> list[str]:
    """The tokenizer's pieces of `text` (their concatenation is `text`)."""
    return _TOKEN.findall(text)


class WordTokenizer:
    """Maps pieces to ids; unknown pieces to <unk>."""

    def __init__(self, vocab: list[str]):
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with the special tokens {SPECIALS}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocabulary has duplicate tokens")
        self.vocab = list(vocab)
        self.ids = {tok: i for i, tok in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)

    @classmethod
    def build(cls, texts: Iterable[str], extra: Iterable[str] = (), min_count: int = 1) -> "WordTokenizer":
        """A vocabulary of every piece in `texts` seen `min_count` times, plus digits, punctuation, `extra`."""
        counts = Counter(p for t in texts for p in split_words(t))
        words = {p for p, n in counts.items() if n >= min_count} | set(_BASE) | set(extra)
        return cls(list(SPECIALS) + sorted(words - set(SPECIALS)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [self.ids.get(p, self.unk_id) for p in split_words(text)]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} outside the vocabulary (size {len(self.vocab)})")
            if skip_special and i < len(SPECIALS) and i != self.unk_id:
                continue
            out.append(self.vocab[i])
        return "".join(out)

    def covers(self, text: str) -> bool:
        """True when every piece of `text` is in the vocabulary (so it round-trips)."""
        return all(p in self.ids for p in split_words(text))

    def to_dict(self) -> dict:
        return {"type": "word", "vocab": self.vocab}

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordTokenizer":
        with open(path) as f:
            data = json.load(f)
        if data.get("type") != "word":
            raise ValueError(f"{path}: not a word tokenizer file")
        return cls(data["vocab"])
