"""Sentence-pair tasks built from real Wikipedia text, for checking fine-tuning end to end.

Two binary tasks, over documents from `bertperf.data.extract.read_documents` (a dump, its
WikiExtractor output or plain text):

- "order": two consecutive sentences of an article, label 1 when they are in their original
  order, 0 when swapped (ALBERT's sentence-order prediction);
- "same_article": label 1 when the second sentence is another (non-adjacent) sentence of the
  first one's article, 0 when it comes from a different article of the same split.

Articles, not pairs, are split into train / dev / test (every 5th article to dev, the next one
to test), so dev and test are held-out articles. Labels are balanced 50/50 by a seeded RNG.
Sentences shorter than `min_words` words are not used.

The files are written in the layout of a GLUE sentence-pair task (that of WNLI / RTE:
`index\\tsentence1\\tsentence2\\tlabel`, labels 0/1, test.tsv without label), so
`bertperf finetune glue --task wnli --data_dir DIR` trains and scores them unchanged.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import re
from typing import Sequence

from bertperf.utils.atomic import atomic_write_text
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

KINDS = ("order", "same_article")
Pair = tuple[str, str, int]


def _clean(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def split_articles(docs: Sequence[list[str]]) -> dict[str, list[list[str]]]:
    """train / dev / test by article index: i % 5 == 0 -> dev, i % 5 == 1 -> test, else train."""
    out: dict[str, list[list[str]]] = {"train": [], "dev": [], "test": []}
    for i, d in enumerate(docs):
        out["dev" if i % 5 == 0 else "test" if i % 5 == 1 else "train"].append(d)
    return out


def build_pairs(docs: Sequence[list[str]], kind: str, seed: int = 12345, min_words: int = 5,
                max_pairs: int = 0) -> list[Pair]:
    """Balanced (sentence1, sentence2, label) pairs of one split (module doc); `max_pairs` > 0
    keeps a random subset of that many."""
    if kind not in KINDS:
        raise BertperfError(f"unknown Wikipedia pair task {kind!r}: use one of {', '.join(KINDS)}")
    rng = random.Random(seed)
    arts = [[_clean(s) for s in d if len(s.split()) >= min_words] for d in docs]
    arts = [a for a in arts if len(a) >= 2]
    pairs: list[Pair] = []
    if kind == "order":
        for a in arts:
            for s1, s2 in zip(a, a[1:]):
                if rng.random() < 0.5:
                    pairs.append((s1, s2, 1))
                else:
                    pairs.append((s2, s1, 0))
    else:
        if len(arts) < 2:
            raise BertperfError("same_article needs at least 2 articles with 2+ usable sentences in a split")
        for ai, a in enumerate(arts):
            for i, s1 in enumerate(a):
                far = [j for j in range(len(a)) if abs(j - i) > 1]
                if rng.random() < 0.5 and far:
                    pairs.append((s1, a[rng.choice(far)], 1))
                else:
                    other = arts[rng.choice([k for k in range(len(arts)) if k != ai])]
                    pairs.append((s1, rng.choice(other), 0))
    rng.shuffle(pairs)
    if max_pairs > 0:
        pairs = pairs[:max_pairs]
    return pairs


def write_task(out_dir: str, splits: dict[str, list[Pair]]) -> list[str]:
    """train.tsv / dev.tsv (with labels) and test.tsv (without), WNLI/RTE layout."""
    paths = []
    for split, pairs in splits.items():
        head = "index\tsentence1\tsentence2" + ("" if split == "test" else "\tlabel")
        rows = [f"{i}\t{a}\t{b}" + ("" if split == "test" else f"\t{y}") for i, (a, b, y) in enumerate(pairs)]
        path = os.path.join(out_dir, f"{split}.tsv")
        atomic_write_text(path, "\n".join([head] + rows) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bertperf finetune wikipairs",
                                description="Build a sentence-pair task from Wikipedia text (GLUE WNLI layout).")
    p.add_argument("--input", required=True, nargs="+", help="Wikipedia dump (.xml.bz2), WikiExtractor output or text")
    p.add_argument("--kind", choices=KINDS, default="order")
    p.add_argument("--out", required=True, help="output folder for train.tsv, dev.tsv, test.tsv")
    p.add_argument("--max_train", type=int, default=0, help="keep at most this many training pairs (0 = all)")
    p.add_argument("--max_eval", type=int, default=0, help="keep at most this many dev / test pairs (0 = all)")
    p.add_argument("--seed", type=int, default=12345)
    a = p.parse_args(argv)
    from bertperf.data.extract import read_documents

    docs = list(read_documents(a.input, quiet=True))
    parts = split_articles(docs)
    splits = {s: build_pairs(d, a.kind, a.seed + k, max_pairs=a.max_train if s == "train" else a.max_eval)
              for k, (s, d) in enumerate(parts.items())}
    write_task(a.out, splits)
    for s, pairs in splits.items():
        pos = sum(y for _, _, y in pairs)
        print(f"{s}: {len(pairs)} pairs from {len(parts[s])} articles ({pos} positive) -> {a.out}/{s}.tsv")
    return 0


if __name__ == "__main__":
    import sys

    from bertperf.utils.errors import run_cli

    sys.exit(run_cli(lambda: main(), prog="bertperf finetune wikipairs"))
