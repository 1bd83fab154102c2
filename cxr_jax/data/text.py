"""Report text: BERT's WordPiece tokenizer and sentence splitting for ConVIRT's sentence sampling.

The vocabulary comes from a local vocab.txt (BERT, ClinicalBERT) or is trained offline on reports.

Tokenization follows `transformers.BertTokenizer`: clean and whitespace-split, lower-case and strip accents,
split off punctuation, then greedy longest-match-first WordPiece with '##' continuations. Training builds a
vocabulary the way Hugging Face's WordPiece trainer does (BPE merges by pair frequency, '##' on non-initial
pieces), so a corpus such as `../shared/data/iu_reports` yields a vocab.txt in BERT's format.
"""

from __future__ import annotations

import collections
import heapq
import io
import os
import pathlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from cxr_jax.data.sources.fileio import DataError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _is_punctuation(char: str) -> bool:
    """BERT's definition: ASCII non-alphanumeric symbols, and every Unicode P* category."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                             (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                             (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def basic_tokenize(text: str, lower: bool = True) -> list[str]:
    """Words and punctuation marks, as BERT's BasicTokenizer produces them."""
    chars = []
    for c in text:
        cp = ord(c)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(c).startswith("C") and c not in "\t\n\r"):
            continue
        chars.append(f" {c} " if _is_cjk(cp) else " " if c.isspace() else c)
    words = []
    for word in "".join(chars).split():
        if lower:
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        piece = ""
        for c in word:
            if _is_punctuation(c):
                words += [piece, c] if piece else [c]
                piece = ""
            else:
                piece += c
        if piece:
            words.append(piece)
    return words


class Tokenizer:
    """WordPiece over a fixed vocabulary; `encode` gives `[CLS] … [SEP]` ids padded with `[PAD]`."""

    def __init__(self, vocab: Sequence[str], lower: bool = True, max_chars_per_word: int = 100):
        self.vocab = list(vocab)
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        missing = [t for t in SPECIALS[:4] if t not in self.ids]
        if missing:
            raise DataError(f"the vocabulary lacks the special tokens {missing} (expected a BERT-style vocab.txt)")
        self.lower, self.max_chars = lower, max_chars_per_word
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (self.ids[t] for t in SPECIALS[:4])

    @classmethod
    def from_file(cls, path: str | pathlib.Path, lower: bool = True) -> Tokenizer:
        """Reads a UTF-8 vocab.txt: one token per line, the line number is the id."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such vocabulary file (expected a BERT vocab.txt, one token per line)")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise DataError(f"{path}: line {line} is not UTF-8 text (a vocab.txt is UTF-8)") from None
        try:  # Lines end at \n, \r\n or \r only (as transformers reads vocab.txt), not at U+2028 and kin.
            return cls([line.rstrip("\n") for line in io.StringIO(text, newline=None)], lower)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None

    def save(self, path: str | pathlib.Path) -> None:
        """Writes vocab.txt in BERT's format, atomically: a temporary file beside it is renamed into place."""
        path = pathlib.Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            partial.write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first pieces of one word; `[UNK]` when it cannot be covered."""
        if len(word) > self.max_chars:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of `text`, without special tokens."""
        return [p for word in basic_tokenize(text, self.lower) for p in self.wordpiece(word)]

    def encode(self, text: str, max_length: int) -> np.ndarray:
        """int32 [max_length]: `[CLS] tokens [SEP]`, truncated to fit, then `[PAD]`s."""
        if max_length < 2:
            raise ValueError(f"max_length={max_length} leaves no room for [CLS] and [SEP]")
        ids = [self.ids.get(t, self.unk_id) for t in self.tokenize(text)][:max_length - 2]
        out = np.full(max_length, self.pad_id, np.int32)
        out[:len(ids) + 2] = [self.cls_id, *ids, self.sep_id]
        return out


def train_vocab(texts: Iterable[str], *, vocab_size: int, min_frequency: int = 2, lower: bool = True) -> list[str]:
    """A WordPiece vocabulary learnt from `texts`: specials, the alphabet, then merges by pair frequency.

    Stops at `vocab_size` tokens or when no pair occurs `min_frequency` times. Deterministic: ties go to the
    lexicographically smallest pair.
    """
    word_counts = collections.Counter(w for t in texts for w in basic_tokenize(t, lower))
    words = {w: [w[0], *("##" + c for c in w[1:])] for w in word_counts}
    vocab = list(SPECIALS) + sorted({s for pieces in words.values() for s in pieces} - set(SPECIALS))
    pairs: collections.Counter = collections.Counter()
    where: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for w, pieces in words.items():
        for pair in zip(pieces, pieces[1:]):
            pairs[pair] += word_counts[w]
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    known = set(vocab)
    while len(vocab) < vocab_size and heap:
        count, pair = heapq.heappop(heap)
        if -count != pairs.get(pair, 0):
            continue  # Stale entry: this pair's count changed since it was pushed.
        if -count < min_frequency:
            break
        merged = pair[0] + pair[1][2:]
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        for w in sorted(where.pop(pair)):
            _merge_word(w, words, word_counts[w], pair, merged, pairs, where, heap)
        pairs.pop(pair, None)
    return vocab


def _merge_word(w, words, count, pair, merged, pairs, where, heap) -> None:
    """Replaces `pair` by `merged` in word `w`, updating the pair counts and the heap."""
    old = words[w]
    new, i = [], 0
    while i < len(old):
        if i + 1 < len(old) and (old[i], old[i + 1]) == pair:
            new.append(merged)
            i += 2
        else:
            new.append(old[i])
            i += 1
    changed = set()
    for p in zip(old, old[1:]):
        pairs[p] -= count
        changed.add(p)
    for p in zip(new, new[1:]):
        pairs[p] += count
        where[p].add(w)
        changed.add(p)
    for p in changed - {pair}:
        if pairs[p] > 0:
            heapq.heappush(heap, (-pairs[p], p))
    words[w] = new


_SECTION = re.compile(r"\b(FINDINGS|IMPRESSION)\s*:\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """The sentences of a report or note, section headers (FINDINGS:, IMPRESSION:) removed."""
    body = _SECTION.sub("\n", text)
    out = []
    for part in body.split("\n"):
        out += [s.strip() for s in _SENTENCE_END.split(part) if any(c.isalnum() for c in s)]
    return out


def encode_sentences(tokenizer: Tokenizer, texts: Sequence[str], *, max_length: int, max_sentences: int,
                     whole: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per text, its first `max_sentences` sentences as ids [N, S, T] and how many there are [N].

    A text with no sentence keeps its whole string as one (so every example has something to sample). With
    `whole`, each text is a single "sentence": its sentences joined, headers removed (then S = 1).
    """
    tokens = np.full((len(texts), 1 if whole else max_sentences, max_length), tokenizer.pad_id, np.int32)
    counts = np.zeros(len(texts), np.int32)
    for i, text in enumerate(texts):
        parts = sentences(text)
        parts = ([" ".join(parts)] if whole and parts else parts[:max_sentences]) or [text]
        counts[i] = len(parts)
        for j, part in enumerate(parts):
            tokens[i, j] = tokenizer.encode(part, max_length)
    return tokens, counts
