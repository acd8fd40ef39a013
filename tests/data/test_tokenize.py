"""WordPiece tokenization: parity with transformers' BertTokenizer (Rust backed) and with its pure
Python port of Google's tokenizer (BertTokenizerLegacy), on real and awkward text."""
from __future__ import annotations

from pathlib import Path

import pytest

from bertperf.data.tokenize import WordPieceTokenizer, load_vocab
from bertperf.utils.errors import BertperfError

AWKWARD = [
    "Café Müller's naïve façade — résumé, coöperate.",
    "中文字符 mixed with English and 日本語.",
    "Tabs\tand\u00a0non-breaking spaces, zero\u200bwidth and control\x07chars.",
    "U.S.A. e.g. 3.14159 $1,000,000 (approx.) 50% off!!! ??? ...",
    "supercalifragilisticexpialidocious " + "a" * 120 + " end",
    "Emoji 😀 and symbols ∑ ∞ ≠ ™ © are here.",
    "ALL CAPS SHOUTING and MiXeD CaSe WoRdS.",
    "",
]


@pytest.fixture(scope="module")
def reference_sentences(sample_documents) -> list[str]:
    flat = [s for d in sample_documents for s in d]
    return flat[:: max(1, len(flat) // 1500)] + AWKWARD


@pytest.mark.parametrize("lower_case", [True, False])
def test_parity_with_transformers(vocab_file: Path, reference_sentences, lower_case: bool):
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    ours = WordPieceTokenizer(vocab_file, lower_case=lower_case)
    fast = BertTokenizer(str(vocab_file), do_lower_case=lower_case)
    slow = BertTokenizerLegacy(str(vocab_file), do_lower_case=lower_case)
    ids = ours.encode_batch(reference_sentences)
    assert len(reference_sentences) > 1000
    for text, got in zip(reference_sentences, ids):
        tokens = ours.convert_ids_to_tokens(got)
        assert tokens == fast.tokenize(text), text
        assert tokens == slow.tokenize(text), text
        assert got == fast.convert_tokens_to_ids(tokens)
    assert "[UNK]" in ours.tokenize(AWKWARD[4])  # a word over 100 characters


def test_special_ids_and_vocab(vocab_file: Path):
    tok = WordPieceTokenizer(vocab_file)
    assert tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.is_subword[tok.vocab["##s"]] and not tok.is_subword[tok.vocab["the"]]
    # As in Google's tokenizer, special-token text in the corpus is not a special token.
    assert tok.cls_id not in tok.encode("a [CLS] b [SEP]")


def test_bad_vocab(tmp_path: Path):
    with pytest.raises(BertperfError, match=f"{tmp_path / 'nope.txt'}.*not found"):
        load_vocab(tmp_path / "nope.txt")
    v = tmp_path / "v.txt"
    v.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(BertperfError, match=r"v.txt.*\[CLS\]"):
        load_vocab(v)
    v.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(BertperfError, match="v.txt.*UTF-8"):
        load_vocab(v)


@pytest.mark.parametrize("lower_case", [True, False])
def test_encode_many_equals_the_rust_pipeline(vocab_file: Path, reference_sentences, lower_case: bool):
    """The bulk path (Python pre-tokenizer and word cache on ASCII text) gives the Rust pipeline's ids."""
    ascii_edges = ["snake_case and kebab-case, x=y+z; {a:[b]} ~`|\\^", "ab\x0bcd ef\x0cgh \x1c\x1d\x1e\x1f end\x7f.",
                   "tabs\tand\r\nnewlines   spaces", "UPPER lower MiXeD 123abc 4.5e-3", "[CLS] [SEP] [MASK]",
                   "x" * 101 + " " + "y" * 100, "@#$%&*()!?", "",
                   "line\u2028sep para\u2029sep ideo\u3000space nb\u00a0sp thin\u2009sp", "e\u0301t\u00e9 \ufeffBOM",
                   "Ｆｕｌｌ ｗｉｄｔｈ ＡＢＣ", "zero\u200bwidth soft\u00adhyphen", "next\u0085line c1\u0080ctl",
                   "Ελληνικά ΣΟΦΊΑ and Русский Текст", "1990–1995 (born 12 May) “quoted” — dash…"]
    texts = reference_sentences + ascii_edges
    tok = WordPieceTokenizer(vocab_file, lower_case=lower_case)
    expected = [e.ids for e in tok.backend.encode_batch(texts, add_special_tokens=False)]
    assert tok.encode_many(texts) == expected
    assert tok.encode_many(texts[::-1]) == expected[::-1]  # with a warm cache
    assert sum(t.isascii() for t in texts) > 0.8 * len(texts)  # the fast path is exercised
