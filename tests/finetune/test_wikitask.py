"""The Wikipedia sentence-pair tasks: labels mean what they say, splits are held-out articles."""
from __future__ import annotations

import pytest

from bertperf.finetune import glue
from bertperf.finetune import wikitask as W
from bertperf.utils.errors import BertperfError


def test_split_articles_is_disjoint(wiki_docs):
    parts = W.split_articles(wiki_docs)
    assert sum(len(v) for v in parts.values()) == len(wiki_docs)
    ids = {k: {id(d) for d in v} for k, v in parts.items()}
    assert not (ids["train"] & ids["dev"]) and not (ids["train"] & ids["test"]) and not (ids["dev"] & ids["test"])


def test_order_pairs(wiki_docs):
    docs = W.split_articles(wiki_docs)["dev"]
    pairs = W.build_pairs(docs, "order", seed=1)
    nxt = {}
    for d in docs:
        s = [W._clean(x) for x in d if len(x.split()) >= 5]
        nxt.update({(a, b): True for a, b in zip(s, s[1:])})
    for a, b, y in pairs:
        assert ((a, b) in nxt) if y == 1 else ((b, a) in nxt)
    assert 0.4 < sum(y for *_, y in pairs) / len(pairs) < 0.6


def test_same_article_pairs(wiki_docs):
    docs = W.split_articles(wiki_docs)["test"]
    art = {}
    for i, d in enumerate(docs):
        for x in d:
            art.setdefault(W._clean(x), set()).add(i)
    pairs = W.build_pairs(docs, "same_article", seed=2, max_pairs=300)
    assert len(pairs) == 300
    for a, b, y in pairs:
        if y:  # b is another sentence of a's article
            assert art[a] & art[b] and a != b
        else:  # b comes from an article a is not in
            assert art[b] - art[a]
    with pytest.raises(BertperfError, match="unknown Wikipedia pair task"):
        W.build_pairs(docs, "topic")


def test_written_files_read_as_glue_pairs(tmp_path, wiki_docs):
    split = {"train": W.build_pairs(wiki_docs[:10], "order"), "dev": W.build_pairs(wiki_docs[10:15], "order"),
             "test": W.build_pairs(wiki_docs[15:20], "order")}
    W.write_task(str(tmp_path), split)
    tr = glue.read_examples(tmp_path, "wnli", "train")
    assert [(e.text_a, e.text_b, int(e.label)) for e in tr] == split["train"]
    te = glue.read_examples(tmp_path, "wnli", "test")
    assert [e.index for e in te] == [str(i) for i in range(len(split["test"]))]
