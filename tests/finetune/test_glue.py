"""GLUE readers on files laid out like the GLUE download, submission files, bad input."""
from __future__ import annotations

import logging

import pytest

from bertperf.finetune import glue as G
from bertperf.finetune.common import encode_pairs, truncate_pair
from bertperf.utils.errors import BertperfError
from tests.finetune.conftest import write_glue


@pytest.fixture()
def glue_dir(tmp_path):
    return write_glue(tmp_path / "glue_data")


# (task, folder, split, expected [(text_a, text_b, label, index)] of the first row, row count)
CASES = [
    ("cola", "CoLA", "train", ("Our friends won't buy this analysis, let alone the next one we propose.", None, "1", None), 3),
    ("cola", "CoLA", "dev", ("The sailors rode the breeze clear of the rocks the.", None, "0", None), 2),
    ("cola", "CoLA", "test", ("Bill whistled past the house.", None, None, "0"), 2),
    ("sst2", "SST-2", "train", ("hide new secretions from the parental units ", None, "0", None), 3),
    ("sst2", "SST-2", "test", ("uneasy mishmash of styles and genres .", None, None, "0"), 2),
    ("mrpc", "MRPC", "train", ('Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
                               'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his evidence .', "1", None), 2),
    ("mrpc", "MRPC", "test", ("PCCW 's chief operating officer , Mike Butcher , and Alex Arena , the chief financial officer , will report directly to Mr So .",
                              "Current Chief Operating Officer Mike Butcher and Group Chief Financial Officer Alex Arena will report to So .", None, "0"), 2),
    ("stsb", "STS-B", "train", ("A plane is taking off.", "An air plane is taking off.", 5.0, None), 2),
    ("stsb", "STS-B", "test", ("A girl is styling her hair.", "A girl is brushing her hair.", None, "0"), 1),
    ("qqp", "QQP", "train", ("How is the life of a math student? Could you describe your own experiences?",
                             "Which level of prepration is enough for the exam jlpt5?", "0", None), 3),  # 1 malformed skipped
    ("qqp", "QQP", "test", ("Would the idea of Trump and Putin in bed together scare you, given the geopolitical implications?",
                            "Do you think that if Donald Trump were elected President, he would be able to restore relations with Putin and Russia as he said he could?", None, "0"), 1),
    ("mnli", "MNLI", "train", ("Conceptually cream skimming has two basic dimensions - product and geography.",
                               "Product and geography are what make cream skimming work. ", "neutral", None), 2),
    ("mnli", "MNLI", "dev", ("The new rights are nice enough", "Everyone really likes the newest benefits ", "neutral", None), 1),
    ("mnli", "MNLI", "dev_mismatched", ("Your contribution helped make it possible for us to provide our students with a quality education.",
                                        "Your contributions were of no help with our students' education.", "contradiction", None), 1),
    ("mnli", "MNLI", "test_mismatched", ("What have you decided, what are you going to do?", "So what's your decision?", None, "0"), 1),
    ("qnli", "QNLI", "dev", ("What came into force after the new constitution was herald?",
                             "As of that day, the new constitution heralding the Second Republic came into force.", "entailment", None), 1),
    ("rte", "RTE", "train", ("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", "not_entailment", None), 2),
    ("wnli", "WNLI", "test", ("Maude and Dora had seen the trains rushing across the prairie.",
                              "Horses ran away when Maude and Dora came in sight.", None, "0"), 1),
    ("ax", "diagnostic", "test", ("The cat sat on the mat.", "The cat did not sit on the mat.", None, "0"), 2),
]


@pytest.mark.parametrize("task,folder,split,first,n", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_read_every_task(glue_dir, task, folder, split, first, n):
    ex = G.read_examples(glue_dir / folder, task, split)
    assert len(ex) == n
    assert (ex[0].text_a, ex[0].text_b, ex[0].label, ex[0].index) == first


def test_qqp_malformed_rows_are_counted_skips(glue_dir, caplog):
    with caplog.at_level(logging.WARNING):
        ex = G.read_examples(glue_dir / "QQP", "qqp", "train")
    assert [e.line for e in ex] == [2, 3, 5]  # line 4 is the malformed one
    assert "skipped 1 malformed QQP rows" in caplog.text and "[4]" in caplog.text


def test_label_ids_and_tasks():
    mnli = G.get_task("MNLI")
    assert mnli.labels == ("contradiction", "entailment", "neutral") and mnli.num_labels == 3
    assert G.get_task("STS-B").is_regression and G.get_task("sts-b").num_labels == 1
    ex = [G.InputExample("g", "a", None, "neutral", None, 2), G.InputExample("g", "a", None, "contradiction", None, 3)]
    assert G.label_ids(mnli, ex) == [2, 0]
    with pytest.raises(BertperfError, match="unknown GLUE task 'mnlx': use one of cola, sst2"):
        G.get_task("mnlx")
    with pytest.raises(BertperfError, match="has no split 'dev_mismatched'"):
        G.read_examples("x", "rte", "dev_mismatched")


# ------------------------------------------------------------------ bad input

def _edit(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


def test_wrong_column_count_names_file_and_line(glue_dir):
    _edit(glue_dir / "MRPC" / "train.tsv", "Yucaipa owned", "Yucaipa\towned")
    with pytest.raises(BertperfError, match=r"MRPC/train.tsv:3: 6 tab-separated columns where task mrpc has 5; fix"):
        G.read_examples(glue_dir / "MRPC", "mrpc", "train")


def test_bad_label_names_file_and_line(glue_dir):
    _edit(glue_dir / "RTE" / "dev.tsv", "\tnot_entailment\n", "\tneutral\n")
    with pytest.raises(BertperfError, match=r"RTE/dev.tsv:2: label 'neutral' is not one of \['entailment', 'not_entailment'\]"):
        G.read_examples(glue_dir / "RTE", "rte", "dev")
    _edit(glue_dir / "STS-B" / "dev.tsv", "4.750", "high")
    with pytest.raises(BertperfError, match=r"STS-B/dev.tsv:3: score 'high' is not a number"):
        G.read_examples(glue_dir / "STS-B", "stsb", "dev")


def test_wrong_file_or_missing(glue_dir, tmp_path):
    # an SST-2 file given as CoLA: its header row is read as data: 2 columns, not 4
    with pytest.raises(BertperfError, match=r"train.tsv:1: 2 tab-separated columns where task cola has 4"):
        G.read_examples(glue_dir / "SST-2", "cola", "train")
    # RTE files given as QNLI: the header names the wrong columns
    with pytest.raises(BertperfError, match=r"header columns \['sentence1', 'sentence2', 'label'\] where task qnli expects"):
        G.read_examples(glue_dir / "RTE", "qnli", "train")
    with pytest.raises(BertperfError, match=r"dev_matched.tsv: GLUE mnli dev file not found; pass --data_dir the MNLI folder"):
        G.read_examples(tmp_path, "mnli", "dev")


# ------------------------------------------------------------------ submissions

EXPECTED_NAMES = {("cola", "test"): "CoLA.tsv", ("sst2", "test"): "SST-2.tsv", ("mrpc", "test"): "MRPC.tsv",
                  ("stsb", "test"): "STS-B.tsv", ("qqp", "test"): "QQP.tsv", ("mnli", "test"): "MNLI-m.tsv",
                  ("mnli", "test_mismatched"): "MNLI-mm.tsv", ("qnli", "test"): "QNLI.tsv", ("rte", "test"): "RTE.tsv",
                  ("wnli", "test"): "WNLI.tsv", ("ax", "test"): "AX.tsv"}


def test_submission_names():
    assert {(t, s): G.submission_name(t, s) for t, s in EXPECTED_NAMES} == EXPECTED_NAMES


@pytest.mark.parametrize("task,folder,split", [("mnli", "MNLI", "test_mismatched"), ("stsb", "STS-B", "test"),
                                               ("cola", "CoLA", "test"), ("ax", "diagnostic", "test"),
                                               ("qnli", "QNLI", "test")])
def test_write_submission_format(glue_dir, tmp_path, task, folder, split):
    ex = G.read_examples(glue_dir / folder, task, split)
    t = G.get_task(task)
    preds = [7.2 if t.is_regression else i % t.num_labels for i in range(len(ex))]
    path = G.write_submission(tmp_path / "sub", task, ex, preds, split)
    assert path.endswith(EXPECTED_NAMES[(task, split)])
    text = open(path, encoding="utf-8").read()
    assert text.startswith("index\tprediction\n") and text.endswith("\n")
    rows = G.read_submission(path)
    assert [r[0] for r in rows] == [e.index for e in ex]
    if t.is_regression:
        assert [r[1] for r in rows] == ["5.000"] * len(ex)  # clipped to [0, 5]
    else:
        assert [r[1] for r in rows] == [t.labels[p] for p in preds]


# ------------------------------------------------------------------ encoding

def test_truncate_pair_google_rule():
    assert truncate_pair([1, 2, 3, 4], [5, 6], 4) == ([1, 2], [5, 6])
    assert truncate_pair([1, 2], [5, 6, 7], 3) == ([1, 2], [5])  # ties drop from b
    assert truncate_pair([1, 2, 3], [5, 6, 7], 4) == ([1, 2], [5, 6])


@pytest.mark.parametrize("max_len", [8, 13, 16, 64, 128])
def test_encode_pairs_matches_hf_tokenizer(glue_dir, tokenizer, vocab_file, max_len):
    """Token ids from HF's BertTokenizer for each side, truncated by Google's rule (checked by
    hand above; HF's Rust 'longest_first' splits odd budgets the other way), then
    [CLS] a [SEP] b [SEP] + padding: equal to encode_pairs."""
    import transformers

    hf = transformers.BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    ex = G.read_examples(glue_dir / "MRPC", "mrpc", "train") + G.read_examples(glue_dir / "QNLI", "qnli", "train")
    enc = encode_pairs(tokenizer, [e.text_a for e in ex], [e.text_b for e in ex], max_len)
    single = encode_pairs(tokenizer, [e.text_a for e in ex], None, max_len)
    for i, e in enumerate(ex):
        a = hf(e.text_a, add_special_tokens=False)["input_ids"]
        b = hf(e.text_b, add_special_tokens=False)["input_ids"]
        ta, tb = truncate_pair(a, b, max_len - 3)
        ids = [101] + ta + [102] + tb + [102]
        pad = max_len - len(ids)
        assert enc["input_ids"][i].tolist() == ids + [0] * pad
        assert enc["segment_ids"][i].tolist() == [0] * (len(ta) + 2) + [1] * (len(tb) + 1) + [0] * pad
        assert enc["input_mask"][i].tolist() == [1] * len(ids) + [0] * pad
        ref1 = hf(e.text_a, truncation=True, max_length=max_len, padding="max_length")["input_ids"]
        assert single["input_ids"][i].tolist() == ref1
