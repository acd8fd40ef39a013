"""BERT WordPiece tokenization with HF `tokenizers`, built from a Google/HF `vocab.txt`.

The pipeline is BERT's: BertNormalizer (clean text, space out CJK characters, lower-case and
strip accents when `lower_case`), BertPreTokenizer (whitespace and punctuation), WordPiece with
`[UNK]` and 100 characters per word at most. No special tokens are added and, as in Google's
`tokenization.py`, a literal "[SEP]" in the text is split like any other text.
On ordinary text the tokens equal `transformers.BertTokenizer(vocab, do_lower_case=...)`.

`encode_many` is the bulk path of `bertperf prepare`: text is cut at whitespace (BERT's
normalizer and pre-tokenizer work within whitespace-separated chunks); ASCII chunks are
pre-tokenized in Python exactly as BertNormalizer + BertPreTokenizer do on ASCII (lower-case,
every ASCII punctuation character its own word), and words and non-ASCII chunks are looked up in a
cache of ids (misses: `_wordpiece`, the same greedy longest-match-first rule in Python, for ASCII
words; the Rust pipeline for non-ASCII chunks). Text with control characters goes through the
Rust pipeline whole. The ids are the same either way (tested); the cache holds at most
`CACHE_WORDS` words (cleared when full).
"""
from __future__ import annotations

import os
import re
from itertools import chain
from typing import Sequence

import numpy as np

from bertperf.utils.errors import BertperfError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CACHE_WORDS = 200_000
CACHE_CHUNK_CHARS = 24  # non-ASCII chunks longer than this are not kept in the cache
# ASCII text that BertNormalizer would change other than by lower-casing: control characters
# (removed, and \x0b \x0c \x1c-\x1f are not whitespace for BERT).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Any text with one of these (Cc other than \t \n \r) takes the Rust path: BERT removes them, and
# some (\x0b \x0c \x1c-\x1f \x85) are whitespace for Python's str.split() but not for BERT.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_WORDS_LOWER = re.compile(r"[a-z0-9]+|[^a-z0-9 \t\n\r]")
_WORDS_CASED = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9 \t\n\r]")


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """token -> id from a vocab.txt (one token per line, the line number is the id)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BertperfError(f"{path}: vocab file not found; pass --vocab with a BERT vocab.txt "
                            "(for example the bert-base-uncased one)")
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise BertperfError(f"{path}: cannot read the vocab ({e.__class__.__name__}: {e}); it must be UTF-8 "
                            "text with one token per line") from None
    while tokens and not tokens[-1]:
        tokens.pop()
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise BertperfError(f"{path}: not a BERT vocab: tokens {missing} are missing (a BERT vocab.txt has "
                            f"{', '.join(SPECIAL_TOKENS)})")
    return vocab


class WordPieceTokenizer:
    """Text -> WordPiece ids for one vocab.

    Attributes: `vocab` (token -> id), `vocab_size` (lines of vocab.txt), `cls_id`, `sep_id`,
    `mask_id`, `pad_id`, `unk_id`, and `is_subword` (bool [vocab_size], True for "##" pieces,
    used by whole-word masking).
    """

    def __init__(self, vocab_file: str | os.PathLike, lower_case: bool = True):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        self.vocab_file = os.fspath(vocab_file)
        self.lower_case = lower_case
        self.vocab = load_vocab(self.vocab_file)
        self.vocab_size = max(self.vocab.values()) + 1
        self.id_to_token = [""] * self.vocab_size
        for tok, i in self.vocab.items():
            self.id_to_token[i] = tok
        self.cls_id, self.sep_id, self.mask_id = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[MASK]"]
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.is_subword = np.array([t.startswith("##") for t in self.id_to_token], dtype=bool)

        tok = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tok = tok
        self._cache: dict[str, list[int]] = {}  # word -> ids, for encode_many

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer` (for offsets, word ids, pair encoding). It adds no
        special tokens by itself: no post-processor is set."""
        return self._tok

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens); runs in parallel inside `tokenizers`."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _wordpiece(self, word: str) -> list[int]:
        """WordPiece ids of one pre-tokenized word: greedy longest match first, "##" for pieces
        after the first, [UNK] for a word longer than 100 characters or with an unmatched piece
        (the rule of `tokenizers.models.WordPiece` and Google's WordpieceTokenizer)."""
        vocab = self.vocab
        if len(word) > 100:
            return [self.unk_id]
        whole = vocab.get(word)
        if whole is not None:
            return [whole]
        out: list[int] = []
        start, n = 0, len(word)
        while start < n:
            end = n
            piece = None
            while start < end:
                piece = vocab.get(word[start:end] if start == 0 else "##" + word[start:end])
                if piece is not None:
                    break
                end -= 1
            if piece is None:
                return [self.unk_id]
            out.append(piece)
            start = end
        return out

    def _rust_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encode = getattr(self._tok, "encode_batch_fast", None) or self._tok.encode_batch
        return [e.ids for e in encode(list(texts), add_special_tokens=False)] if texts else []

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, as `encode_batch`, faster on ASCII text (see the module docstring)."""
        cache = self._cache
        if len(cache) > CACHE_WORDS:
            cache.clear()
        findall = (_WORDS_LOWER if self.lower_case else _WORDS_CASED).findall
        control = _ASCII_CONTROL.search
        any_control = _CONTROL.search
        lower = self.lower_case
        words: list[list[str] | None] = []
        others: list[int] = []
        missing: set[str] = set()
        seen = missing.update
        for i, text in enumerate(texts):
            if text.isascii():
                if control(text) is None:
                    w = findall(text.lower() if lower else text)
                    seen(w)
                    words.append(w)
                    continue
            elif any_control(text) is None:
                # Whitespace-separated chunks are tokenized independently by BERT's normalizer and
                # pre-tokenizer; without control characters Python's split() cuts where BERT does.
                w = []
                for chunk in text.split():
                    if chunk.isascii():
                        w.extend(findall(chunk.lower() if lower else chunk))
                    else:
                        w.append(chunk)
                seen(w)
                words.append(w)
                continue
            words.append(None)
            others.append(i)
        wordpiece = self._wordpiece
        chunks = []
        for x in missing:
            if x not in cache:
                if x.isascii():
                    cache[x] = wordpiece(x)
                else:
                    chunks.append(x)
        cache.update(zip(chunks, self._rust_batch(chunks)))
        out: list[list[int]] = [[] for _ in texts]
        get = cache.__getitem__
        for i, w in enumerate(words):
            if w is not None:
                out[i] = list(chain.from_iterable(map(get, w)))
        for x in chunks:  # long chunks (a Chinese sentence has no spaces) are rarely seen twice
            if len(x) > CACHE_CHUNK_CHARS:
                del cache[x]
        for i, ids in zip(others, self._rust_batch([texts[i] for i in others])):
            out[i] = ids
        return out

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize(self, text: str) -> list[str]:
        """WordPiece token strings of `text` (for checks against other tokenizers)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.id_to_token[int(i)] for i in ids]
