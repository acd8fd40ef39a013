"""Chinese text for BERT pre-training: CJK detection and sentence splitting.

Tokenization needs nothing Chinese-specific here: `bertperf.data.tokenize` uses HF's
`BertNormalizer(handle_chinese_chars=True)`, which puts spaces around every CJK ideograph, so
WordPiece sees each character as one word, exactly as Google's BERT-Chinese `tokenization.py`
(`_tokenize_chinese_chars`) does. With a Chinese vocab (21128 tokens for `bert-base-chinese`)
each character becomes one token, or `[UNK]` when the vocab lacks it.

Sentences end at 。！？；!? and at runs of … (or "..."), together with any closing quotes or
brackets that follow (”’」』）》】"' and ")"). Whole-word masking needs word segmentation for
Chinese (Chinese-BERT-wwm uses LTP); without it every character is its own word, so
`--do_whole_word_mask` changes nothing on Chinese text.
"""
from __future__ import annotations

import re

# The CJK blocks of Google's tokenization._is_chinese_char (Hangul and kana are not in them).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
_CJK_CLASS = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in CJK_RANGES)
_CJK = re.compile(f"[{_CJK_CLASS}]")
_NON_SPACE = re.compile(r"\S")

# End of a sentence: the punctuation, then closing quotes/brackets.
_ZH_END = re.compile(r"(?:[。！？；!?]+|…+|\.{3,})[”’」』）》】\"')\]]*")

ZH_THRESHOLD = 0.3  # a text is Chinese when at least this fraction of its non-space characters is CJK


def is_cjk(ch: str) -> bool:
    """True for a CJK ideograph (the ranges BERT-Chinese tokenizes one character at a time)."""
    return bool(_CJK.match(ch))


def cjk_fraction(text: str) -> float:
    """Fraction of the non-space characters of `text` that are CJK ideographs (0 for blank text)."""
    n = len(_NON_SPACE.findall(text))
    return len(_CJK.findall(text)) / n if n else 0.0


def looks_chinese(text: str) -> bool:
    """True when at least ZH_THRESHOLD of the non-space characters are CJK ideographs."""
    return _CJK.search(text) is not None and cjk_fraction(text) >= ZH_THRESHOLD


def split_sentences_zh(text: str) -> list[str]:
    """Split Chinese text into sentences after 。！？；!? or …, keeping closing quotes with their
    sentence; whitespace-only pieces are dropped and pieces are stripped.

    >>> split_sentences_zh("他说：“你好！”然后走了。真的吗？")
    ['他说：“你好！”', '然后走了。', '真的吗？']
    """
    out: list[str] = []
    start = 0
    for m in _ZH_END.finditer(text):
        piece = text[start:m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    piece = text[start:].strip()
    if piece:
        out.append(piece)
    return out
