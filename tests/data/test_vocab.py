"""bertperf vocab: BERT's layout, the trained vocab.txt working with bertperf's tokenizer, transformers
and `bertperf prepare`, text round-tripping (checked against an independent basic tokenizer), Chinese,
and bad input."""
from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest

from bertperf.cli import main as cli_main
from bertperf.data.tokenize import SPECIAL_TOKENS, WordPieceTokenizer, load_vocab
from bertperf.data.vocab import layout, main
from bertperf.utils.errors import BertperfError

CHINESE = """北京是中华人民共和国的首都，也是全国的政治中心和文化中心。
长城是古代中国修建的军事工程，全长两万多公里。
上海位于长江入海口，是中国最大的经济中心城市。

黄河是中国第二长河，被称为中华民族的母亲河。
今天天气很好，我们一起去公园散步吧！
他在2008年参加了北京奥运会的志愿者工作。
"""


def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_words(text: str, lower: bool) -> list[str]:
    """Google's BasicTokenizer, written independently: clean, space CJK, lower + strip accents,
    split on whitespace and punctuation."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\x00\ufffd" or (cat in ("Cc", "Cf") and ch not in "\t\n\r"):
            continue
        out.append(f" {ch} " if is_cjk(ch) else (" " if ch.isspace() else ch))
    words = []
    for word in "".join(out).split():
        if lower:
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        cur = ""
        for ch in word:
            cp = ord(ch)
            if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
                    unicodedata.category(ch).startswith("P"):
                if cur:
                    words.append(cur)
                words.append(ch)
                cur = ""
            else:
                cur += ch
        if cur:
            words.append(cur)
    return words


def merge(tokens: list[str]) -> list[str]:
    words: list[str] = []
    for t in tokens:
        if t.startswith("##"):
            words[-1] += t[2:]
        else:
            words.append(t)
    return words


@pytest.fixture(scope="module")
def wiki_text(sample_documents, tmp_path_factory) -> Path:
    """The real Wikipedia slice as Google-format text."""
    path = tmp_path_factory.mktemp("corpus") / "wiki.txt"
    path.write_text("\n\n".join("\n".join(d) for d in sample_documents) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(wiki_text: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    assert main(["--input", str(wiki_text), "--output", str(out), "--vocab_size", "3000", "--quiet"]) == 0
    return out


def test_layout_matches_bert_base_uncased(vocab_file: Path):
    real = vocab_file.read_text(encoding="utf-8").splitlines()
    ours = layout(["the", "##s", "[CLS]", "[unused5]", "of"], unused=994)
    assert ours[:999] == real[:999]  # [PAD], [unused0-98], [UNK] [CLS] [SEP] [MASK], [unused99-993]
    assert ours[999:] == ["the", "##s", "of"]
    assert layout(["a"], unused=0) == list(SPECIAL_TOKENS) + ["a"]
    assert layout(["a"], unused=3) == ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]",
                                       "[MASK]", "a"]


def test_trained_vocab_works_and_round_trips(trained: Path, sample_documents):
    lines = trained.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3000 and lines[:5] == list(SPECIAL_TOKENS) and len(set(lines)) == len(lines)
    assert not list(trained.parent.glob("*.tmp"))  # atomic write leaves no temporary
    vocab = load_vocab(trained)
    assert vocab["[PAD]"] == 0 and max(vocab.values()) == 2999
    tok = WordPieceTokenizer(trained, lower_case=True)
    sents = [s for d in sample_documents for s in d][::7][:400]
    for s in sents:
        tokens = tok.tokenize(s)
        assert "[UNK]" not in tokens, s
        assert merge(tokens) == basic_words(s, lower=True), s
        assert tok.encode(s) == [vocab[t] for t in tokens]
    # learned pieces are used: frequent words are single tokens, the text compresses below 1 token per char
    assert "the" in vocab and "##s" in vocab
    n_tok = sum(len(tok.tokenize(s)) for s in sents)
    assert n_tok < 0.35 * sum(len(s) for s in sents)


def test_transformers_reads_it(trained: Path, sample_documents, tmp_path: Path, monkeypatch):
    import shutil

    from transformers import BertTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copy(trained, tmp_path / "vocab.txt")  # a directory with a vocab.txt, as HF reads it
    hf = BertTokenizer.from_pretrained(str(tmp_path), do_lower_case=True)
    assert len(hf) == 3000
    ours = WordPieceTokenizer(trained, lower_case=True)
    for s in [s for d in sample_documents for s in d][:300:3]:
        assert hf.tokenize(s) == ours.tokenize(s), s


def test_prepare_accepts_it(trained: Path, wiki_text: Path, tmp_path: Path):
    from bertperf.data.prepare import main as prepare_main
    from bertperf.data.shards import find_shards, read_shard

    small = tmp_path / "small.txt"
    small.write_text("\n\n".join(wiki_text.read_text(encoding="utf-8").split("\n\n")[:8]) + "\n", encoding="utf-8")
    assert prepare_main(["--input", str(small), "--vocab", str(trained), "--output_dir", str(tmp_path / "s"),
                         "--dupe_factor", "1", "--quiet"]) == 0
    files = find_shards(tmp_path / "s")
    ids = np.concatenate([read_shard(f, vocab_size=3000)["input_ids"] for f in files])
    assert len(ids) > 10 and (ids[:, 0] == 2).all()  # [CLS] is id 2 in this vocab
    assert (ids == 1).mean() < 0.001  # almost no [UNK]


def test_cased(wiki_text: Path, tmp_path: Path):
    out = tmp_path / "cased.txt"
    assert cli_main(["vocab", "--input", str(wiki_text), "--output", str(out), "--vocab_size", "3000",
                     "--no_lower_case", "--unused", "10", "--quiet"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "[PAD]" and lines[11:15] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "The" in lines and "the" in lines
    tok = WordPieceTokenizer(out, lower_case=False)
    s = "The Republic of Austria is a landlocked country."
    assert merge(tok.tokenize(s)) == basic_words(s, lower=False)


def test_chinese_characters_one_by_one(tmp_path: Path):
    corpus = tmp_path / "zh.txt"
    corpus.write_text(CHINESE * 3, encoding="utf-8")
    out = tmp_path / "zh_vocab.txt"
    assert main(["--input", str(corpus), "--output", str(out), "--vocab_size", "300", "--limit_alphabet", "5000",
                 "--min_frequency", "1", "--quiet"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    chars = {c for c in CHINESE if is_cjk(c)}
    assert chars <= set(lines)  # every CJK character of the corpus is a token
    assert not [t for t in lines if sum(is_cjk(c) for c in t.removeprefix("##")) > 1]  # never two in one token
    tok = WordPieceTokenizer(out, lower_case=True)
    for s in CHINESE.split():
        tokens = tok.tokenize(s)
        assert "[UNK]" not in tokens and merge(tokens) == basic_words(s, lower=True)
        assert [t for t in tokens if any(is_cjk(c) for c in t)] == [c for c in s if is_cjk(c)]


def test_bad_input(tmp_path: Path, wiki_text: Path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(BertperfError, match="empty.txt: the corpus has no text"):
        main(["--input", str(empty), "--output", str(tmp_path / "v.txt"), "--quiet"])
    with pytest.raises(BertperfError, match="--vocab_size 5 leaves no room"):
        main(["--input", str(wiki_text), "--output", str(tmp_path / "v.txt"), "--vocab_size", "5", "--quiet"])
    with pytest.raises(BertperfError, match="--vocab_size 50 leaves no room.*994 \\[unused\\]"):
        main(["--input", str(wiki_text), "--output", str(tmp_path / "v.txt"), "--vocab_size", "50",
              "--unused", "994", "--quiet"])
    with pytest.raises(BertperfError, match="more distinct characters than fit in --vocab_size 40"):
        main(["--input", str(wiki_text), "--output", str(tmp_path / "v.txt"), "--vocab_size", "40", "--quiet"])
    assert cli_main(["vocab", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "v.txt"),
                     "--quiet"]) == 2
    assert "nope.txt: input file not found" in capsys.readouterr().err
    assert not (tmp_path / "v.txt").exists()


def test_wikipedia_dump_input_gives_the_same_vocab(trained: Path, sample_xml: Path, tmp_path: Path):
    """The XML dump goes through wikiextractor to the same documents as the text file `trained` was
    learned from: the vocab is byte-identical (training is deterministic)."""
    out = tmp_path / "from_xml.txt"
    assert main(["--input", str(sample_xml), "--output", str(out), "--vocab_size", "3000", "--quiet"]) == 0
    assert out.read_bytes() == trained.read_bytes()
