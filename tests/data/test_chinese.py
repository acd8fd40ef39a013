"""Chinese: sentence splitting on Chinese punctuation, one token per CJK character as BERT-Chinese
(checked against transformers' pure-Python port of Google's tokenizer), and `bertperf prepare` end
to end with a Chinese vocab the test builds from its own text (no network)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from bertperf.data.chinese import cjk_fraction, is_cjk, looks_chinese, split_sentences_zh
from bertperf.data.extract import RawDocument, split_document, split_paragraph
from bertperf.data.prepare import main
from bertperf.data.shards import find_shards, read_shard
from bertperf.data.tokenize import SPECIAL_TOKENS, WordPieceTokenizer

# Common characters, for sentences the test generates.
CHARS = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后"
         "小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长")
ENDS = "。！？；"


@pytest.mark.parametrize("text,expected", [
    ("今天天气很好。我们去公园吧！你去吗？", ["今天天气很好。", "我们去公园吧！", "你去吗？"]),
    ("他说：“你好！”然后走了。", ["他说：“你好！”", "然后走了。"]),
    ("第一句；第二句……第三句", ["第一句；", "第二句……", "第三句"]),
    ("「真的？」她问。（是的。）好", ["「真的？」", "她问。", "（是的。）", "好"]),
    ("BERT模型很大。GPU很贵!对吗?", ["BERT模型很大。", "GPU很贵!", "对吗?"]),
    ("没有标点", ["没有标点"]),
    ("  。", ["。"]),
    ("", []),
])
def test_split_sentences_zh(text, expected):
    assert split_sentences_zh(text) == expected


def test_language_detection_and_document_splitting():
    assert is_cjk("中") and is_cjk("\u3400") and not is_cjk("a") and not is_cjk("。") and not is_cjk("の")
    assert cjk_fraction("中文 ab") == 0.5 and cjk_fraction("   ") == 0.0
    assert looks_chinese("这是中文。") and not looks_chinese("English with 中 inside.")
    assert split_paragraph("你好。再见。") == ["你好。", "再见。"]
    assert split_paragraph("Dr. Smith left. He came back.") == ["Dr. Smith left.", "He came back."]
    assert split_paragraph("Hi. 你好。", language="zh") == ["Hi. 你好。"]
    # Google-format lines are sentences already; Chinese lines are still split on Chinese punctuation.
    raw = RawDocument(["第一句。第二句！", "An English line. Kept whole."], paragraphs=False)
    assert split_document(raw) == ["第一句。", "第二句！", "An English line. Kept whole."]
    assert split_document(raw, language="en") == raw.lines


def chinese_corpus(n_docs: int, seed: int = 0) -> list[list[str]]:
    """Documents of paragraphs; each paragraph holds several sentences ending in Chinese punctuation."""
    r = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        paras = []
        for _ in range(r.randint(2, 5)):
            paras.append("".join("".join(r.choice(CHARS) for _ in range(r.randint(4, 20))) + r.choice(ENDS)
                                 for _ in range(r.randint(2, 6))))
        docs.append(paras)
    return docs


def write_vocab(path: Path, chars: str) -> Path:
    """A BERT-Chinese-style vocab: [PAD], [unused1..], specials, then one token per character."""
    tokens = ["[PAD]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(chars))
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def test_one_token_per_character_like_bert_chinese(tmp_path):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    vocab = write_vocab(tmp_path / "vocab.txt", CHARS + ENDS + "，：“”")
    ours = WordPieceTokenizer(vocab, lower_case=True)
    slow = BertTokenizerLegacy(str(vocab), do_lower_case=True)
    texts = ["".join(p) for p in chinese_corpus(20, seed=1)] + ["中文，夹杂English和数字123。", "龘龘字典外的字"]
    for text in texts:
        tokens = ours.tokenize(text)
        assert tokens == slow.tokenize(text), text
    text = texts[0]
    assert ours.tokenize(text) == [c for c in text]  # every character one token, all in the vocab
    assert ours.tokenize("龘的") == ["[UNK]", "的"]


@pytest.mark.parametrize("language", ["zh", "auto"])
def test_prepare_chinese_end_to_end(tmp_path, language):
    docs = chinese_corpus(30)
    corpus = tmp_path / "zh.txt"  # Google format, but each line a paragraph of several sentences
    corpus.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    vocab = write_vocab(tmp_path / "vocab.txt", CHARS + ENDS)
    out = tmp_path / "out"
    assert main(["--input", str(corpus), "--vocab", str(vocab), "--output_dir", str(out), "--quiet",
                 "--language", language, "--dupe_factor", "2", "--max_seq_length", "64",
                 "--max_predictions_per_seq", "10"]) == 0
    s = json.loads((out / "prepare_summary.json").read_text())
    sentences = sum(len(split_sentences_zh(p)) for d in docs for p in d)
    characters = sum(len(p) for d in docs for p in d)
    assert s["counts"]["documents"] == 30 and s["counts"]["sentences"] == sentences
    assert s["counts"]["tokens"] == characters  # one token per character
    tok = WordPieceTokenizer(vocab)
    arrays = [read_shard(f, vocab_size=tok.vocab_size) for f in find_shards(out)]
    ids = np.concatenate([a["input_ids"] for a in arrays])
    assert ids.shape[1] == 64 and len(ids) == s["counts"]["instances"] > 50
    # Restore the masked tokens: every segment is a run of characters of the corpus.
    text = "".join(p for d in docs for p in d)
    k = 0
    for a in arrays:
        for row, pos, lab, mask in zip(a["input_ids"], a["masked_lm_positions"], a["masked_lm_ids"], a["input_mask"]):
            row = row.copy()
            row[pos[pos > 0]] = lab[pos > 0]
            tokens = tok.convert_ids_to_tokens(row[:int(mask.sum())])
            sep = tokens.index("[SEP]")
            for segment in (tokens[1:sep], tokens[sep + 1:-1]):
                assert segment and all(len(t) == 1 for t in segment)
                if k < 200:
                    assert "".join(segment) in text
            k += 1
