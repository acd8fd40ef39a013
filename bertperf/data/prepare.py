"""`bertperf prepare`: Wikipedia dump or text -> masked-LM/NSP pre-training shards.

    bertperf prepare --input enwiki-latest-pages-articles.xml.bz2 --vocab vocab.txt --output_dir shards/
    python -m bertperf.data.prepare --input corpus.txt --vocab vocab.txt --output_dir shards/ --dupe_factor 5

Stages: read/extract documents (wikiextractor for XML dumps) and split sentences, tokenize
(WordPiece, batched), create instances (Google's algorithm, `bertperf.data.instances`), shuffle,
write gzip HDF5 shards `shard_00000.hdf5`, ... in NVIDIA DeepLearningExamples' schema plus a
`prepare_summary.json` with the settings and counts. Everything is held in memory (about 1 KB per
instance at S=128): for all of Wikipedia, split the text into parts and run one `prepare` per part.
Output is deterministic: the same inputs, vocab and flags give byte-identical shards.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from bertperf.utils.errors import BertperfError, run_cli

log = logging.getLogger(__name__)

SHARD_NAME = "shard_{:05d}.hdf5"
SHARD_PATTERN = re.compile(r"shard_\d{5}\.hdf5")
SUMMARY_NAME = "prepare_summary.json"
TOKENIZE_BATCH = 8192


@dataclass
class Summary:
    """Counts reported at the end of a run (and saved to prepare_summary.json)."""

    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    instances: int = 0
    shards: int = 0
    seconds: float = 0.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertperf prepare",
        description="Create BERT pre-training data (masked LM + next sentence prediction) as gzip HDF5 shards "
                    "in NVIDIA DeepLearningExamples' schema, with the algorithm of Google's "
                    "create_pretraining_data.py. Same inputs and flags -> identical shards.")
    p.add_argument("--input", required=True, nargs="+", action="extend", metavar="PATH",
                   help="input(s), repeatable: a Wikipedia XML dump (.xml or .xml.bz2; text extracted with "
                        "wikiextractor), a WikiExtractor output file or directory (<doc> blocks; paragraphs are "
                        "split into sentences), or Google plain text (one sentence per line, blank line between "
                        "documents; .bz2/.gz allowed)")
    p.add_argument("--vocab", required=True, metavar="FILE", help="BERT WordPiece vocab.txt (one token per line)")
    p.add_argument("--output_dir", required=True, metavar="DIR",
                   help="directory for shard_00000.hdf5, ... and prepare_summary.json (created if needed; "
                        "stale shard_NNNNN.hdf5 files from an earlier run are removed)")
    p.add_argument("--max_seq_length", type=int, default=128, metavar="S",
                   help="sequence length S of every instance, [CLS] A [SEP] B [SEP] plus padding (default %(default)s)")
    p.add_argument("--max_predictions_per_seq", type=int, default=20, metavar="P",
                   help="maximum masked positions per instance, the padded width P (default %(default)s)")
    p.add_argument("--masked_lm_prob", type=float, default=0.15,
                   help="fraction of tokens to mask, before the P cap (default %(default)s)")
    p.add_argument("--dupe_factor", type=int, default=10,
                   help="number of passes over the input, each with different masks (default %(default)s)")
    p.add_argument("--short_seq_prob", type=float, default=0.1,
                   help="probability of a shorter target length for a document, to reduce the mismatch "
                        "between pre-training and fine-tuning (default %(default)s)")
    p.add_argument("--random_seed", type=int, default=12345, help="seed of the random generator (default %(default)s)")
    p.add_argument("--do_lower_case", dest="lower_case", action="store_true", default=True,
                   help="lower-case and strip accents before WordPiece (the default; for uncased vocabs)")
    p.add_argument("--no_lower_case", dest="lower_case", action="store_false",
                   help="keep case and accents (for cased vocabs)")
    p.add_argument("--do_whole_word_mask", action="store_true",
                   help="mask all WordPiece pieces of a word together (Google's flag; off by default)")
    p.add_argument("--instances_per_shard", type=int, default=None, metavar="N",
                   help="split the instances into shards of at most N (default: one shard)")
    p.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="wikiextractor processes for XML dumps (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage logs, only the final summary")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Reject unusable flag values with a BertperfError naming the flag."""
    from bertperf.data.instances import InstanceConfig

    try:
        InstanceConfig(args.max_seq_length, args.max_predictions_per_seq, args.masked_lm_prob,
                       args.short_seq_prob).check()
    except ValueError as e:
        raise BertperfError(f"--{e}") from None
    if args.dupe_factor < 1:
        raise BertperfError(f"--dupe_factor must be >= 1, got {args.dupe_factor}")
    if args.instances_per_shard is not None and args.instances_per_shard < 1:
        raise BertperfError(f"--instances_per_shard must be >= 1, got {args.instances_per_shard}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise BertperfError(f"{args.output_dir}: --output_dir exists and is not a directory")


def read_all_documents(inputs: list[str], processes: int, progress: bool) -> list[list[str]]:
    """Documents (sentence lists) of every input; an input without any text is an error."""
    from tqdm import tqdm

    from bertperf.data.extract import detect_kind, read_documents

    for path in inputs:  # fail fast, before a long extraction of another input
        if not os.path.isdir(path):
            detect_kind(path)
    documents: list[list[str]] = []
    for path in inputs:
        before = len(documents)
        for doc in tqdm(read_documents([path], processes=processes, quiet=not progress),
                        desc=f"reading {os.path.basename(path.rstrip(os.sep)) or path}", unit="doc",
                        disable=not progress, mininterval=0.5):
            documents.append(doc)
        if len(documents) == before:
            raise BertperfError(f"{path}: empty input, no document with text found (expected a Wikipedia XML dump, "
                                "WikiExtractor output or one-sentence-per-line text)")
    return documents


def tokenize_documents(documents: list[list[str]], tokenizer, progress: bool) -> list[list[list[int]]]:
    """Sentence strings -> token id lists, batched through the Rust tokenizer."""
    from tqdm import tqdm

    flat = [s for doc in documents for s in doc]
    ids: list[list[int]] = []
    for start in tqdm(range(0, len(flat), TOKENIZE_BATCH), desc="tokenizing", unit="batch",
                      disable=not progress, mininterval=0.5):
        ids.extend(tokenizer.encode_batch(flat[start:start + TOKENIZE_BATCH]))
    out, k = [], 0
    for doc in documents:
        out.append(ids[k:k + len(doc)])
        k += len(doc)
    return out


def write_shards(arrays_of, n: int, output_dir: str, per_shard: int | None, progress: bool) -> list[str]:
    """Write instances [0, n) as shards of at most `per_shard`; remove stale shards; return paths."""
    from tqdm import tqdm

    from bertperf.data.shards import write_shard

    os.makedirs(output_dir, exist_ok=True)
    per_shard = per_shard or max(n, 1)
    count = max(1, math.ceil(n / per_shard))
    paths = []
    for k in tqdm(range(count), desc="writing shards", unit="shard", disable=not progress or count == 1):
        path = os.path.join(output_dir, SHARD_NAME.format(k))
        write_shard(path, arrays_of(k * per_shard, min(n, (k + 1) * per_shard)))
        paths.append(path)
    written = {os.path.basename(p) for p in paths}
    for name in sorted(os.listdir(output_dir)):
        if SHARD_PATTERN.fullmatch(name) and name not in written:
            log.info("removing stale shard %s", name)
            os.unlink(os.path.join(output_dir, name))
    return paths


def write_summary(path: str, args: argparse.Namespace, summary: Summary, vocab_size: int) -> None:
    settings = {k: v for k, v in vars(args).items() if k not in ("quiet", "processes")}
    data = {"settings": settings, "vocab_size": vocab_size, "counts": asdict(summary)}
    fd, tmp = tempfile.mkstemp(prefix=SUMMARY_NAME + ".", suffix=".tmp", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def prepare(args: argparse.Namespace) -> Summary:
    """Run every stage for parsed arguments; return the counts."""
    from bertperf.data.instances import (InstanceConfig, SpecialIds, create_training_instances,
                                         instances_to_arrays)
    from bertperf.data.tokenize import WordPieceTokenizer

    t0 = time.perf_counter()
    check_args(args)
    progress = not args.quiet
    tokenizer = WordPieceTokenizer(args.vocab, lower_case=args.lower_case)
    summary = Summary()

    documents = read_all_documents(args.input, args.processes, progress)
    summary.documents = len(documents)
    summary.sentences = sum(len(d) for d in documents)
    log.info("read %d documents, %d sentences (%.1fs)", summary.documents, summary.sentences, time.perf_counter() - t0)

    tokenized = tokenize_documents(documents, tokenizer, progress)
    del documents
    summary.tokens = sum(len(s) for d in tokenized for s in d)
    if summary.tokens == 0:
        raise BertperfError(f"{', '.join(args.input)}: empty input, the text has no tokens")
    log.info("tokenized: %d tokens (%.1fs)", summary.tokens, time.perf_counter() - t0)

    cfg = InstanceConfig(args.max_seq_length, args.max_predictions_per_seq, args.masked_lm_prob,
                         args.short_seq_prob, args.do_whole_word_mask)
    special = SpecialIds(cls=tokenizer.cls_id, sep=tokenizer.sep_id, mask=tokenizer.mask_id,
                         vocab_size=tokenizer.vocab_size, is_subword=tokenizer.is_subword)
    if sum(1 for d in tokenized if any(d)) < 2:
        log.warning("only one document: 'random next' segments come from the same document")
    rng = random.Random(args.random_seed)
    instances = create_training_instances(tokenized, cfg, special, args.dupe_factor, rng, progress=progress)
    summary.instances = len(instances)
    log.info("created %d instances (%.1fs)", summary.instances, time.perf_counter() - t0)

    def arrays_of(start: int, stop: int):
        return instances_to_arrays(instances[start:stop], cfg.max_seq_length, cfg.max_predictions_per_seq)

    paths = write_shards(arrays_of, len(instances), args.output_dir, args.instances_per_shard, progress)
    summary.shards = len(paths)
    summary.seconds = round(time.perf_counter() - t0, 3)
    write_summary(os.path.join(args.output_dir, SUMMARY_NAME), args, summary, tokenizer.vocab_size)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    summary = prepare(args)
    print(f"documents {summary.documents}, sentences {summary.sentences}, tokens {summary.tokens}, "
          f"instances {summary.instances}, shards {summary.shards} in {args.output_dir}, "
          f"{summary.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(), prog="bertperf prepare"))
