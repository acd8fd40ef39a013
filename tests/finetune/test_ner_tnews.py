"""NER readers and word-piece alignment; TNEWS reader and submission."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from bertperf.finetune import ner as N
from bertperf.finetune import tnews as TN
from bertperf.utils.errors import BertperfError

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
.\t.\tO\tO

-DOCSTART- -X- -X- O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""

# the first record of CLUENER 2020 train.json
CLUENER_LINE = {"text": "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。",
                "label": {"name": {"叶老桂": [[9, 11]]}, "company": {"浙商银行": [[0, 3]]}}}


def test_read_conll(tmp_path):
    p = tmp_path / "eng.train"
    p.write_text(CONLL)
    s = N.read_conll(p)
    assert [x.words for x in s] == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"]]
    assert [x.tags for x in s] == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"]]
    assert s[0].where.endswith("eng.train:3") and s[1].where.endswith("eng.train:11")
    assert N.label_list(s) == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    p.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(BertperfError, match=r"eng.train:2: 'rejects' has no tag column"):
        N.read_conll(p)


def test_read_cluener_and_back(tmp_path):
    p = tmp_path / "train.json"
    p.write_text(json.dumps(CLUENER_LINE, ensure_ascii=False) + "\n\n" + json.dumps({"id": 7, "text": "台湾"}, ensure_ascii=False) + "\n")
    s = N.read_cluener(p)
    assert len(s) == 2 and s[1].tags is None and s[1].id == 7 and s[1].words == ["台", "湾"]
    tags = s[0].tags
    assert tags[:5] == ["B-company", "I-company", "I-company", "I-company", "O"]
    assert tags[9:13] == ["B-name", "I-name", "I-name", "O"]
    assert sum(t != "O" for t in tags) == 7
    assert N.tags_to_cluener(CLUENER_LINE["text"], tags) == CLUENER_LINE["label"]
    out = tmp_path / "pred.json"
    N.write_cluener_predictions(out, s, [tags, ["O", "O"]])
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"id": 0, "label": CLUENER_LINE["label"]}, {"id": 7, "label": {}}]


@pytest.mark.parametrize("label,msg", [
    ({"name": {"叶老桂": [[9, 12]]}}, r"entity '叶老桂' is not at \[9, 12\]"),
    ({"name": {"叶老桂": [[9, 11]]}, "x": {"老桂博": [[10, 12]]}}, "overlaps another entity"),
    ({"name": {"叶老桂": [9, 11]}}, r"span 9 must be \[start, end\]"),
])
def test_cluener_errors(tmp_path, label, msg):
    p = tmp_path / "dev.json"
    p.write_text(json.dumps({"text": CLUENER_LINE["text"], "label": label}, ensure_ascii=False) + "\n")
    with pytest.raises(BertperfError, match=msg):
        N.read_cluener(p)


def test_alignment_hand_case(tokenizer):
    s = [N.Sentence(["Jim", "Henson", "puppeteer", "."], ["B-PER", "I-PER", "O", "O"], "x:1")]
    l2i = {"O": 0, "B-PER": 1, "I-PER": 2}
    enc = N.encode_words(tokenizer, s, l2i, 10)
    toks = [tokenizer.backend.id_to_token(int(i)) for i in enc.arrays["input_ids"][0][:7]]
    assert toks == ["[CLS]", "jim", "henson", "puppet", "##eer", ".", "[SEP]"]
    assert enc.arrays["labels"][0].tolist() == [-100, 1, 2, 0, -100, 0, -100, -100, -100, -100]
    assert enc.arrays["word_index"][0].tolist() == [-1, 0, 1, 2, -1, 3, -1, -1, -1, -1]
    assert enc.arrays["input_mask"][0].tolist() == [1] * 7 + [0] * 3
    # truncation to 4 pieces (+2 specials): "." and the 2nd piece of puppeteer go; "." -> predicted O
    enc = N.encode_words(tokenizer, s, l2i, 5)
    assert enc.truncated_words == 1
    tags = N.decode_predictions(np.full((1, 5), 1), enc.arrays["word_index"], s, ["O", "B-PER", "I-PER"])
    assert tags == [["B-PER", "B-PER", "B-PER", "O"]]
    with pytest.raises(BertperfError, match=r"x:1: tag 'B-LOC' \(word 1\) is not in the training label set"):
        N.encode_words(tokenizer, [N.Sentence(["Paris"], ["B-LOC"], "x:1")], l2i, 8)


@pytest.mark.parametrize("max_len", [16, 48, 512])
def test_alignment_matches_hf_word_ids_on_wikipedia(tokenizer, vocab_file, wiki_docs, max_len):
    """First-piece labels equal those built from HF's BertTokenizer word_ids(); decoding the gold
    label ids gives back the gold tags of every word that was not cut off."""
    import transformers

    hf = transformers.BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    rng = random.Random(max_len)
    labels = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    sents = []
    for d in wiki_docs[:30]:
        words = d[rng.randrange(len(d))].split()
        sents.append(N.Sentence(words, [rng.choice(labels) for _ in words], "wiki"))
    enc = N.encode_words(tokenizer, sents, {t: i for i, t in enumerate(labels)}, max_len)
    for i, s in enumerate(sents):
        r = hf(s.words, is_split_into_words=True, truncation=True, max_length=max_len, padding="max_length")
        assert enc.arrays["input_ids"][i].tolist() == r["input_ids"]
        want, prev = [], None
        for w in r.word_ids():
            want.append(-100 if w is None or w == prev else labels.index(s.tags[w]))
            prev = w
        assert enc.arrays["labels"][i].tolist() == want
    pred = np.where(enc.arrays["labels"] >= 0, enc.arrays["labels"], 0)
    back = N.decode_predictions(pred, enc.arrays["word_index"], sents, labels)
    kept = 0
    for s, b, wi in zip(sents, back, enc.arrays["word_index"]):
        have = set(wi[wi >= 0].tolist())
        assert [t if k in have else "O" for k, t in enumerate(s.tags)] == b
        kept += len(have)
    assert kept > 0 and (max_len > 100) == (enc.truncated_words == 0)


def test_write_conll_predictions(tmp_path):
    s = [N.Sentence(["EU", "rejects"], ["B-ORG", "O"], "x")]
    N.write_conll_predictions(tmp_path / "p.txt", s, [["B-ORG", "B-PER"]])
    assert (tmp_path / "p.txt").read_text() == "EU B-ORG B-ORG\nrejects O B-PER\n\n"


# ------------------------------------------------------------------ TNEWS

TNEWS_TRAIN = [
    {"label": "102", "label_desc": "news_entertainment", "sentence": "江疏影甜甜圈自拍，迷之角度竟这么好看，美吸引一切事物", "keywords": "江疏影,美少女,经纪人,甜甜圈"},
    {"label": "110", "label_desc": "news_military", "sentence": "以色列大规模空袭开始！伊朗多个军事目标遭遇打击，誓言对等反击", "keywords": "伊朗,圣城军,叙利亚"},
]


def test_tnews_read_and_submit(tmp_path):
    (tmp_path / "train.json").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in TNEWS_TRAIN) + "\n")
    ex = TN.read_tnews(tmp_path / "train.json")
    assert [e.label for e in ex] == ["102", "110"] and ex[1].keywords == "伊朗,圣城军,叙利亚"
    labels = TN.load_labels(tmp_path)  # no labels.json there: the built-in 15
    assert len(labels) == 15 and labels["116"] == "news_game"
    (tmp_path / "test.json").write_text(json.dumps({"id": 0, "sentence": "这是什么", "keywords": ""}, ensure_ascii=False) + "\n")
    test = TN.read_tnews(tmp_path / "test.json")
    assert test[0].label is None and test[0].id == 0
    path = TN.write_predictions(tmp_path / "out", test, [list(labels).index("103")], labels)
    assert path.endswith("tnews_predict.json")
    assert json.loads(open(path, encoding="utf-8").read()) == {"id": 0, "label": "103", "label_desc": "news_sports"}


def test_tnews_errors(tmp_path):
    p = tmp_path / "dev.json"
    p.write_text(json.dumps({"label": "105", "sentence": "x"}) + "\n")
    with pytest.raises(BertperfError, match=r"dev.json:1: label '105' is not a TNEWS label"):
        TN.read_tnews(p)
    p.write_text('{"label": "100", "sentence": "x"}\n{"label": "100"}\n')
    with pytest.raises(BertperfError, match=r"dev.json:2: field 'sentence'"):
        TN.read_tnews(p)
    (tmp_path / "labels.json").write_text('{"label": "1", "label_desc": "a"}\n{"label": "2", "label_desc": "b"}\n')
    assert TN.load_labels(tmp_path) == {"1": "a", "2": "b"}
