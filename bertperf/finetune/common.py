"""Small helpers shared by the fine-tuning tasks: the fast tokenizer and file checks."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from bertperf.utils.errors import BertperfError


def need_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """Return `path` as str if it is a file; else BertperfError '<path>: <what> not found; <fix>'."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BertperfError(f"{path}: {what} not found; {fix}")
    return path



def guess_lower_case(vocab: dict[str, int] | Sequence[str]) -> bool:
    """True for an uncased vocab: fewer than 1% of its tokens contain an upper-case letter.

    (bert-base-uncased and the Chinese vocab: ~0%; bert-base-cased: ~25%.)
    """
    tokens = [t for t in vocab if not (t.startswith("[") and t.endswith("]"))]
    upper = sum(any(c.isupper() for c in t) for t in tokens)
    return upper < 0.01 * max(1, len(tokens))


@dataclass
class FastTokenizer:
    """A BERT WordPiece `tokenizers.Tokenizer` (no special tokens, no truncation, no padding)
    plus the ids of the special tokens. Built by `load_tokenizer`.

    `backend.encode(text, add_special_tokens=False)` gives `.ids`, `.offsets` (character spans
    into the original text) and `.word_ids` (for pre-split input).
    """

    backend: Any
    vocab_size: int
    cls_id: int
    sep_id: int
    pad_id: int
    lower_case: bool
    vocab_file: str


def load_tokenizer(vocab_file: str | os.PathLike, lower_case: bool | None = None) -> FastTokenizer:
    """The BERT tokenizer of `bertperf.data.tokenize` for `vocab_file` (a vocab.txt, or a model
    directory holding one), lower-casing as `guess_lower_case` says unless `lower_case` is given."""
    from bertperf.data.tokenize import WordPieceTokenizer, load_vocab

    vocab_file = os.fspath(vocab_file)
    if os.path.isdir(vocab_file):
        vocab_file = os.path.join(vocab_file, "vocab.txt")
    if lower_case is None:
        lower_case = guess_lower_case(load_vocab(vocab_file))
    wp = WordPieceTokenizer(vocab_file, lower_case=lower_case)
    return FastTokenizer(
        backend=wp.backend,  # the `tokenizers.Tokenizer` it builds (offsets, word_ids needed here)
        vocab_size=wp.vocab_size,
        cls_id=wp.cls_id,
        sep_id=wp.sep_id,
        pad_id=wp.pad_id,
        lower_case=lower_case,
        vocab_file=vocab_file,
    )


def truncate_pair(a: list[int], b: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """Google's _truncate_seq_pair: drop the last token of the longer list (of `b` on ties) until
    len(a) + len(b) <= max_tokens. Returns new lists."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def encode_pairs(
    tokenizer: FastTokenizer,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None,
    max_seq_length: int,
) -> dict[str, "np.ndarray"]:
    """BERT inputs for single texts or text pairs: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`,
    truncated as Google's run_classifier (a alone: cut to max_seq_length - 2; pairs:
    `truncate_pair` to max_seq_length - 3), padded with 0 to max_seq_length.
    Returns int64 arrays input_ids, segment_ids, input_mask [N, max_seq_length]."""
    import numpy as np

    if max_seq_length < 4:
        raise BertperfError(f"max_seq_length {max_seq_length} is too small: use at least 4")
    tok = tokenizer.backend
    enc_a = [e.ids for e in tok.encode_batch(list(texts_a), add_special_tokens=False)]
    enc_b = None if texts_b is None else [e.ids for e in tok.encode_batch(list(texts_b), add_special_tokens=False)]
    n = len(enc_a)
    out = {k: np.zeros((n, max_seq_length), dtype=np.int64) for k in ("input_ids", "segment_ids", "input_mask")}
    if tokenizer.pad_id:
        out["input_ids"][:] = tokenizer.pad_id
    for i in range(n):
        if enc_b is None:
            ids = [tokenizer.cls_id] + enc_a[i][: max_seq_length - 2] + [tokenizer.sep_id]
            segs = [0] * len(ids)
        else:
            a, b = truncate_pair(enc_a[i], enc_b[i], max_seq_length - 3)
            ids = [tokenizer.cls_id] + a + [tokenizer.sep_id] + b + [tokenizer.sep_id]
            segs = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        out["input_ids"][i, : len(ids)] = ids
        out["segment_ids"][i, : len(ids)] = segs
        out["input_mask"][i, : len(ids)] = 1
    return out
