"""BERT WordPiece tokenization with HF `tokenizers`, built from a Google/HF `vocab.txt`.

The pipeline is BERT's: BertNormalizer (clean text, space out CJK characters, lower-case and
strip accents when `lower_case`), BertPreTokenizer (whitespace and punctuation), WordPiece with
`[UNK]` and 100 characters per word at most. No special tokens are added and, as in Google's
`tokenization.py`, a literal "[SEP]" in the text is split like any other text.
On ordinary text the tokens equal `transformers.BertTokenizer(vocab, do_lower_case=...)`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from bertperf.utils.errors import BertperfError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer` (for offsets, word ids, pair encoding). It adds no
        special tokens by itself: no post-processor is set."""
        return self._tok

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens); runs in parallel inside `tokenizers`."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize(self, text: str) -> list[str]:
        """WordPiece token strings of `text` (for checks against other tokenizers)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.id_to_token[int(i)] for i in ids]
