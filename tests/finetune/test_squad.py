"""SQuAD: official-score reproduction on hand cases, feature windows against HF's tokenizer,
answer round trips on real Wikipedia text, post-processing."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from bertperf.finetune import squad as S
from bertperf.utils.errors import BertperfError


def _dataset(qas):
    """qas: list of (id, [gold texts]); v2 marks questions with no gold as impossible."""
    return {"version": "x", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": q, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds],
         "is_impossible": not golds} for q, golds in qas]}]}]}


# ------------------------------------------------------------------ official evaluation, v1.1

def test_normalize_answer():
    assert S.normalize_answer("  The  Eiffel-Tower, an icon!  ") == "eiffeltower icon"
    assert S.normalize_answer("A theatre anthem") == "theatre anthem"  # only whole words a/an/the
    assert S.normalize_answer("the") == ""


def test_v1_hand_case():
    data = _dataset([("q1", ["the Eiffel Tower", "Eiffel Tower"]), ("q2", ["Denver Broncos"]),
                     ("q3", ["1990", "in 1990s"]), ("q4", ["x"])])
    for qa in data["data"][0]["paragraphs"][0]["qas"]:
        del qa["is_impossible"]
    preds = {"q1": "Eiffel tower!", "q2": "The Denver Broncos team", "q3": "1990s"}
    # q1: "eiffel tower" == gold 1 -> EM 1, F1 1
    # q2: "denver broncos team" vs "denver broncos": EM 0; common 2, P 2/3, R 1 -> F1 0.8
    # q3: vs "1990": nothing shared -> 0; vs "in 1990s": common 1, P 1, R 1/2 -> 2/3; max 2/3
    # q4: no prediction -> 0, still counted in the total (4)
    got = S.evaluate_v1(data, preds)
    assert got["exact_match"] == pytest.approx(100 * 1 / 4)
    assert got["f1"] == pytest.approx(100 * (1 + 0.8 + 2 / 3) / 4)
    assert S.evaluate(data, preds) == got  # detected as v1.1


def test_v1_v2_empty_string_quirks():
    # v1.1: "" vs "the": both normalise to "" -> EM 1, but F1 0 (no shared token)
    assert S.exact_v1("", "the") == 1.0 and S.f1_v1("", "the") == 0.0
    # v2.0: empty vs empty -> F1 1; empty vs non-empty -> 0
    assert S.f1_v2("the", "") == 1.0 and S.f1_v2("", "x") == 0.0 and S.f1_v2("x", "") == 0.0


# ------------------------------------------------------------------ official evaluation, v2.0

V2_DATA = _dataset([("q1", ["Normans", "the Normans"]), ("q2", ["in the 10th and 11th centuries"]),
                    ("q3", []), ("q4", []), ("q5", ["a"])])
V2_PREDS = {"q1": "Normans", "q2": "10th century", "q3": "", "q4": "France", "q5": ""}
# raw scores (exact, f1):
# q1 (1, 1); q2: gold tokens [in 10th and 11th centuries], pred [10th century]: common 1,
#   P 1/2, R 1/5 -> F1 2*(1/10)/(7/10) = 2/7, exact 0; q3 no-answer, pred "" -> (1, 1);
# q4 no-answer, pred "France" -> (0, 0); q5: gold "a" normalises to "" so it is dropped and
#   the gold becomes [""] (an official quirk), pred "" -> (1, 1) although has_ans is True.
F1_Q2 = 2 / 7


def test_v2_hand_case_no_na_probs():
    got = S.evaluate_v2(V2_DATA, V2_PREDS)
    assert got["exact"] == pytest.approx(100 * 3 / 5)
    assert got["f1"] == pytest.approx(100 * (3 + F1_Q2) / 5)
    assert got["total"] == 5
    assert got["HasAns_exact"] == pytest.approx(100 * 2 / 3)        # q1 q2 q5
    assert got["HasAns_f1"] == pytest.approx(100 * (2 + F1_Q2) / 3)
    assert got["HasAns_total"] == 3
    assert (got["NoAns_exact"], got["NoAns_f1"], got["NoAns_total"]) == (50.0, 50.0, 2)
    assert "best_f1" not in got
    assert S.evaluate(V2_DATA, V2_PREDS) == got  # detected as v2.0


def test_v2_hand_case_thresholds():
    na = {"q1": 0.1, "q2": 0.25, "q3": 0.9, "q4": 0.3, "q5": 0.2}
    got = S.evaluate_v2(V2_DATA, V2_PREDS, na)
    # na_prob_thresh 1.0: nothing is switched to no-answer -> same main scores as without na
    assert got["exact"] == pytest.approx(60.0)
    # find_best_thresh: start at #no-answer = 2; by increasing na: q1 +1 -> 3 (0.1),
    # q5 +1 -> 4 (0.2), q2 +0 (exact) / +2/7 (f1) -> 4 / 4+2/7 (0.25), q4 pred non-empty -1,
    # q3 pred empty 0. Best exact 4/5 at 0.2; best f1 (4 + 2/7)/5 at 0.25.
    assert got["best_exact"] == pytest.approx(80.0) and got["best_exact_thresh"] == 0.2
    assert got["best_f1"] == pytest.approx(100 * (4 + F1_Q2) / 5) and got["best_f1_thresh"] == 0.25
    # threshold 0.28: q3 (0.9) and q4 (0.3) become no-answer -> q4 now right (1); q1 q2 q5 unchanged
    low = S.evaluate_v2(V2_DATA, V2_PREDS, na, na_prob_thresh=0.28)
    assert low["exact"] == pytest.approx(100 * 4 / 5)
    assert low["f1"] == pytest.approx(100 * (4 + F1_Q2) / 5)
    assert low["NoAns_exact"] == 100.0


def test_v2_missing_prediction_is_an_error():
    with pytest.raises(BertperfError, match="no prediction"):
        S.evaluate_v2(V2_DATA, {"q1": "x"})


# ------------------------------------------------------------------ reading

def test_read_examples_and_errors(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(V2_DATA))
    ex = S.read_squad_examples(p)
    assert [e.qas_id for e in ex] == ["q1", "q2", "q3", "q4", "q5"]
    assert ex[2].is_impossible and ex[2].answers == [] and ex[0].answers[1]["text"] == "the Normans"
    bad = json.loads(json.dumps(V2_DATA))
    del bad["data"][0]["paragraphs"][0]["qas"][1]["question"]
    p.write_text(json.dumps(bad))
    with pytest.raises(BertperfError, match=r"paragraphs\[0\].qas\[1\]: field 'question'"):
        S.read_squad_examples(p)
    p.write_text("{not json")
    with pytest.raises(BertperfError, match="not valid JSON"):
        S.read_squad_examples(p)
    with pytest.raises(BertperfError, match="not found"):
        S.read_squad_examples(tmp_path / "missing.json")


# ------------------------------------------------------------------ windows

def test_windows_and_max_context_hand():
    assert S.windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert S.windows(10, 4, 5) == [(0, 4), (4, 4), (8, 2)]  # stride capped at the window length
    assert S.windows(3, 4, 2) == [(0, 3)]
    assert S.windows(0, 4, 2) == [(0, 0)]
    spans = [(0, 4), (3, 4), (6, 4)]
    # pos 3: span0 min(3,0)+.04, span1 min(0,3)+.04: tie -> first span
    assert S.is_max_context(spans, 0, 3) and not S.is_max_context(spans, 1, 3)
    # pos 4: only span1 (min(1,2)) -> span1
    assert S.is_max_context(spans, 1, 4)
    with pytest.raises(BertperfError, match="max_seq_length"):
        S.windows(10, 0, 3)


@pytest.mark.parametrize("n,m,d", [(10, 4, 3), (57, 13, 5), (100, 30, 30), (9, 20, 4), (31, 8, 1)])
def test_max_context_vectorised_equals_rule(n, m, d):
    spans = S.windows(n, m, d)
    best = S.max_context_spans(spans, n)
    for p in range(n):
        assert [S.is_max_context(spans, i, p) for i in range(len(spans))] == [i == best[p] for i in range(len(spans))]


def _answer_examples(docs, seed, n=40):
    """Examples on real Wikipedia text: context = 6-20 sentences, answer = 1-6 pre-tokenizer
    pieces starting and ending with a letter or digit, question = a sentence of another article."""
    from tokenizers.pre_tokenizers import BertPreTokenizer

    rng = random.Random(seed)
    pre = BertPreTokenizer()
    out = []
    while len(out) < n:
        d = rng.randrange(len(docs))
        if len(docs[d]) < 8:
            continue
        i = rng.randrange(len(docs[d]) - 6)
        context = " ".join(docs[d][i:i + rng.randint(6, 20)])
        pieces = [(s, e) for w, (s, e) in pre.pre_tokenize_str(context) if any(c.isalnum() for c in w)]
        a = rng.randrange(len(pieces))
        b = min(len(pieces) - 1, a + rng.randint(0, 5))
        s, e = pieces[a][0], pieces[b][1]
        q = rng.choice(docs[(d + 1) % len(docs)])
        out.append(S.SquadExample(f"w{len(out)}", q, context, [{"text": context[s:e], "answer_start": s}]))
    # awkward characters: accents (NFD changes lengths), CJK, curly quotes, tabs, superscripts
    ctx = "Café  naïve\tcrème brûlée — “Zürich” 台湾 x² in the 1990s; ÅNGSTRÖM ﬁnance ok."
    for ans in ["naïve", "crème brûlée", "Zürich", "台湾", "1990s", "ÅNGSTRÖM ﬁnance"]:
        out.append(S.SquadExample(f"a{len(out)}", "Where is it?", ctx, [{"text": ans, "answer_start": ctx.index(ans)}]))
    return out


@pytest.mark.parametrize("max_seq,stride,max_q", [(64, 16, 16), (128, 48, 32), (40, 7, 8), (96, 200, 64)])
def test_features_round_trip_on_wikipedia(wiki_docs, tokenizer, max_seq, stride, max_q):
    examples = _answer_examples(wiki_docs, seed=max_seq + stride)
    feats, stats = S.create_features(examples, tokenizer, max_seq, stride, max_q, is_training=True)
    assert stats.skipped_bad_answer == 0 and stats.features == len(feats)
    by_ex = {}
    for f in feats:
        by_ex.setdefault(f.example_index, []).append(f)
        assert len(f.input_ids) == len(f.segment_ids) == len(f.input_mask) == len(f.offsets) == max_seq
    multi = 0
    for ei, ex in enumerate(examples):
        fs = by_ex[ei]
        multi += len(fs) > 1
        ctx_tok = tokenizer.backend.encode(ex.context, add_special_tokens=False)
        ans = ex.answers[0]["text"]
        first, last = S.answer_token_span(ctx_tok.offsets, ex.answers[0]["answer_start"],
                                          ex.answers[0]["answer_start"] + len(ans))
        labelled = 0
        seen_max = np.zeros(len(ctx_tok.ids), dtype=int)
        for f in fs:
            n_ctx = sum(o is not None for o in f.offsets)
            c0 = ctx_tok.offsets.index(next(o for o in f.offsets if o is not None))  # window start
            seen_max[c0:c0 + n_ctx] += [m for m, o in zip(f.max_context, f.offsets) if o is not None]
            inside = c0 <= first and last < c0 + n_ctx
            if f.start_position:
                labelled += 1
                assert inside
                # the labelled tokens, decoded through their offsets, give back the answer
                text = ex.context[f.offsets[f.start_position][0]:f.offsets[f.end_position][1]]
                assert text == ans
                assert S.normalize_answer(text) == S.normalize_answer(ans)
                assert f.segment_ids[f.start_position] == 1 and f.input_mask[f.end_position] == 1
            else:
                assert not inside and f.end_position == 0
        n_q = len(tokenizer.backend.encode(ex.question, add_special_tokens=False).ids)
        window = max_seq - min(max_q, n_q) - 3
        overlap = window - min(stride, window)
        if last - first + 1 <= overlap + 1:  # an answer this short always lies wholly in some window
            assert labelled >= 1
        # every context token is "max context" in exactly one window
        assert np.all(seen_max == 1)
    assert multi > 0  # the contexts really were split into several windows


@pytest.mark.parametrize("max_seq,stride,max_q", [(64, 16, 16), (40, 7, 8)])
def test_windows_equal_hf_tokenizer(wiki_docs, tokenizer, vocab_file, max_seq, stride, max_q):
    """Our windows equal HF's BertTokenizer overflow windows with stride = window - doc_stride."""
    import transformers

    hf = transformers.BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    examples = _answer_examples(wiki_docs, seed=7, n=10)
    feats, _ = S.create_features(examples, tokenizer, max_seq, stride, max_q)
    for ei, ex in enumerate(examples):
        q_ids = hf(ex.question, add_special_tokens=False)["input_ids"][:max_q]
        window = max_seq - len(q_ids) - 3
        r = hf(hf.decode(q_ids) if len(q_ids) == max_q else ex.question, ex.context,
               truncation="only_second", max_length=max_seq, stride=window - stride,
               return_overflowing_tokens=True, return_offsets_mapping=True)
        mine = [f for f in feats if f.example_index == ei]
        assert len(mine) == len(r["input_ids"])
        for f, ids, tt, off in zip(mine, r["input_ids"], r["token_type_ids"], r["offset_mapping"]):
            n = sum(f.input_mask)
            if len(q_ids) < max_q:  # (a cut question is re-tokenised from text by HF: compare ids only then)
                assert f.input_ids[:n] == ids and f.segment_ids[:n] == tt
            ctx_off = [o for o in f.offsets if o is not None]
            assert ctx_off == [tuple(o) for o, t in zip(off, tt) if t == 1][:-1]  # minus the last [SEP]


# ------------------------------------------------------------------ post-processing

def _onehot_logits(feats, spans, seq):
    """Logits 5 at each feature's (start, end), 0 elsewhere."""
    sl, el = np.zeros((len(feats), seq)), np.zeros((len(feats), seq))
    for i, (s, e) in enumerate(spans):
        sl[i, s], el[i, e] = 5.0, 5.0
    return sl, el


def test_postprocess_gold_logits_score_100(wiki_docs, tokenizer):
    examples = _answer_examples(wiki_docs, seed=3, n=25)
    feats, _ = S.create_features(examples, tokenizer, 64, 20, 16, is_training=True)
    sl, el = _onehot_logits(feats, [(f.start_position, f.end_position) for f in feats], 64)
    preds, nbest, odds = S.postprocess(examples, feats, sl, el, max_answer_length=64)
    data = {"data": [{"paragraphs": [{"context": e.context, "qas": [
        {"id": e.qas_id, "question": e.question, "answers": e.answers}]} for e in examples]}]}
    # every prediction is its gold text: EM 100; F1 100 except answers that normalise to nothing
    # ("the", "a"), which the v1.1 script scores F1 0 (no shared token)
    n_empty = sum(not S.normalize_answer(e.answers[0]["text"]) for e in examples)
    assert S.evaluate_v1(data, preds) == pytest.approx({"exact_match": 100.0, "f1": 100.0 * (1 - n_empty / len(examples))})
    assert preds == {e.qas_id: e.answers[0]["text"] for e in examples}
    assert odds == {}
    assert all(abs(sum(d["probability"] for d in v) - 1) < 1e-9 for v in nbest.values())


def test_postprocess_rules_hand_case(tokenizer):
    ctx = "alpha beta gamma delta epsilon"
    ex = [S.SquadExample("q", "which?", ctx, [{"text": "gamma", "answer_start": 11}])]
    feats, _ = S.create_features(ex, tokenizer, 16, 8, 8)
    assert len(feats) == 1
    f = feats[0]
    p0 = f.offsets.index((0, 5))  # "alpha" position
    sl, el = np.zeros((1, 16)), np.zeros((1, 16))
    sl[0, 1], el[0, 1] = 9.0, 9.0            # a question token: never an answer
    sl[0, p0], el[0, p0 + 4] = 4.0, 4.0      # alpha..epsilon: 5 tokens
    el[0, p0 + 2] = 3.0                      # alpha..gamma: 3 tokens
    preds, nbest, _ = S.postprocess(ex, feats, sl, el, max_answer_length=5)
    assert preds["q"] == ctx
    preds, _, _ = S.postprocess(ex, feats, sl, el, max_answer_length=3)
    assert preds["q"] == "alpha beta gamma"
    # v2: null score sl[0]+el[0] = 0 vs best 8 -> diff -8 -> answer; raise [CLS] to 5+5 -> diff 2
    preds, _, odds = S.postprocess(ex, feats, sl, el, version_2=True)
    assert preds["q"] == ctx and odds["q"] == pytest.approx(-8.0)
    sl[0, 0] = el[0, 0] = 5.0
    preds, nb, odds = S.postprocess(ex, feats, sl, el, version_2=True)
    assert preds["q"] == "" and odds["q"] == pytest.approx(2.0) and nb["q"][0]["text"] == ""
    preds, _, _ = S.postprocess(ex, feats, sl, el, version_2=True, null_score_diff_threshold=2.5)
    assert preds["q"] == ctx


def test_write_predictions(tmp_path):
    paths = S.write_predictions(tmp_path / "out", {"q": "x"}, {"q": [{"text": "x"}]}, {"q": 1.5})
    assert [p.rsplit("/", 1)[1] for p in paths] == ["predictions.json", "nbest_predictions.json", "null_odds.json"]
    assert json.loads(open(paths[0]).read()) == {"q": "x"}
    assert json.loads(open(paths[2]).read()) == {"q": 1.5}
