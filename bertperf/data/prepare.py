"""`bertperf prepare`: Wikipedia dumps or text -> masked-LM/NSP pre-training shards, in parallel.

    bertperf prepare --input enwiki-latest-pages-articles.xml.bz2 --vocab vocab.txt --output_dir shards/ \\
        --workers 8 --phases 128:20,512:80
    python -m bertperf.data.prepare --input corpus.txt --vocab vocab.txt --output_dir shards/ --dupe_factor 5

Stages (see `bertperf.data.stream` for the design, the memory bound and the deviation from
Google's whole-corpus "random next" pool): the parent streams the input (wikiextractor for XML
dumps, through a pipe) in blocks of --block_docs documents; --workers processes split sentences,
tokenize (WordPiece, once for all phases), create instances with the algorithm of Google's
`create_pretraining_data.py` (`bertperf.data.instances`, same flags and defaults), and write gzip
HDF5 shards in NVIDIA DeepLearningExamples' schema.

Output layout:
* one phase (default, from --max_seq_length/--max_predictions_per_seq): `<out>/shard_KKKKK_JJJ.hdf5`
  (block K, part J: --instances_per_shard splits a block's instances into parts);
* --phases 128:20,512:80: `<out>/phase1_128/shard_*.hdf5` and `<out>/phase2_512/shard_*.hdf5`, the
  same documents tokenized once, with independent masks and pairs per phase (NVIDIA's two phases);
* `<out>/prepare_summary.json`: settings, counts, skipped bad input, per-phase files;
* `<out>/.prepare/block_KKKKK.json`: one record per finished block, for resuming.

Same inputs, vocab and flags give byte-identical shards for any --workers. Rerunning an
interrupted command skips the blocks already finished. Bad input (non-UTF-8 lines, malformed
<doc> blocks, empty and one-sentence documents) is skipped and counted, never fatal.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from bertperf.data.extract import LANGUAGES
from bertperf.data.stream import (SHARD_NAME, Phase, StreamConfig, Summary, parse_phases, run,
                                  summary_dict)
from bertperf.utils.errors import BertperfError, run_cli
from bertperf.utils.malloc import keep_freed_memory

log = logging.getLogger(__name__)

SUMMARY_NAME = "prepare_summary.json"
__all__ = ["SHARD_NAME", "SUMMARY_NAME", "build_parser", "main", "prepare"]


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertperf prepare",
        description="Create BERT pre-training data (masked LM + next sentence prediction) as gzip HDF5 shards "
                    "in NVIDIA DeepLearningExamples' schema, with the algorithm of Google's "
                    "create_pretraining_data.py, streaming and in parallel. Same inputs and flags -> identical "
                    "shards for any number of workers; an interrupted run resumes where it stopped.")
    p.add_argument("--input", required=True, nargs="+", action="extend", metavar="PATH",
                   help="input(s), repeatable: a Wikipedia XML dump (.xml or .xml.bz2; text extracted with "
                        "wikiextractor, streamed through a pipe), a WikiExtractor output file or directory "
                        "(<doc> blocks; paragraphs are split into sentences), or Google plain text (one sentence "
                        "per line, blank line between documents; .bz2/.gz allowed). Chinese text is welcome")
    p.add_argument("--vocab", required=True, metavar="FILE",
                   help="BERT WordPiece vocab.txt (one token per line; e.g. 30522 uncased, 21128 Chinese)")
    p.add_argument("--output_dir", required=True, metavar="DIR",
                   help="directory for the shards, prepare_summary.json and .prepare/ resume records (created if "
                        "needed; shards of an earlier run that this run does not produce are removed)")
    p.add_argument("--max_seq_length", type=int, default=128, metavar="S",
                   help="sequence length S of every instance, [CLS] A [SEP] B [SEP] plus padding (default %(default)s)")
    p.add_argument("--max_predictions_per_seq", type=int, default=20, metavar="P",
                   help="maximum masked positions per instance, the padded width P (default %(default)s)")
    p.add_argument("--phases", default=None, metavar="S:P,...",
                   help="several outputs from one tokenization pass, e.g. 128:20,512:80 writes <out>/phase1_128/ "
                        "and <out>/phase2_512/ (NVIDIA's phase 1 and phase 2); replaces --max_seq_length and "
                        "--max_predictions_per_seq")
    p.add_argument("--masked_lm_prob", type=float, default=0.15,
                   help="fraction of tokens to mask, before the P cap (default %(default)s)")
    p.add_argument("--dupe_factor", type=int, default=10,
                   help="number of passes over the input, each with different masks (default %(default)s)")
    p.add_argument("--short_seq_prob", type=float, default=0.1,
                   help="probability of a shorter target length for a document, to reduce the mismatch "
                        "between pre-training and fine-tuning (default %(default)s)")
    p.add_argument("--random_seed", type=int, default=12345, help="seed of the random generator (default %(default)s)")
    p.add_argument("--do_lower_case", dest="lower_case", nargs="?", const=True, default=True, type=_bool,
                   metavar="BOOL", help="lower-case and strip accents before WordPiece (the default; for uncased "
                                        "and Chinese vocabs); --do_lower_case=false as in Google's script")
    p.add_argument("--no_lower_case", dest="lower_case", action="store_false",
                   help="keep case and accents (for cased vocabs)")
    p.add_argument("--do_whole_word_mask", nargs="?", const=True, default=False, type=_bool, metavar="BOOL",
                   help="mask all WordPiece pieces of a word together (Google's flag; off by default; on Chinese "
                        "every character is a word, so it changes nothing there)")
    p.add_argument("--language", choices=LANGUAGES, default="auto",
                   help="sentence splitting rules: en, zh (split on 。！？；…), or auto: Chinese rules for text "
                        "that is at least 30%% CJK (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes that tokenize and create instances (default %(default)s: in this "
                        "process); the output does not depend on N")
    p.add_argument("--block_docs", type=int, default=1000, metavar="B",
                   help="documents per block: the unit of work, memory and resume (default %(default)s). Unlike "
                        "Google's script, 'random next' segments come from another document of the same block and "
                        "instances are shuffled within a block (the loader shuffles across shards); changing B "
                        "changes the output")
    p.add_argument("--instances_per_shard", type=int, default=None, metavar="N",
                   help="split each block's instances into shards of at most N (default: one shard per block)")
    p.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="wikiextractor processes for XML dumps (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage logs, only the final summary")
    return p


def check_args(args: argparse.Namespace) -> tuple[Phase, ...]:
    """Reject unusable flag values with a BertperfError naming the flag; return the phases."""
    from bertperf.data.instances import InstanceConfig

    phases = parse_phases(args.phases) if args.phases else (Phase(args.max_seq_length, args.max_predictions_per_seq),)
    for ph in phases:
        try:
            InstanceConfig(ph.max_seq_length, ph.max_predictions_per_seq, args.masked_lm_prob,
                           args.short_seq_prob).check()
        except ValueError as e:
            flag = "phases: " if args.phases else ""
            raise BertperfError(f"--{flag}{e}") from None
    for name, low in (("dupe_factor", 1), ("workers", 1), ("block_docs", 1)):
        if getattr(args, name) < low:
            raise BertperfError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.instances_per_shard is not None and args.instances_per_shard < 1:
        raise BertperfError(f"--instances_per_shard must be >= 1, got {args.instances_per_shard}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise BertperfError(f"{args.output_dir}: --output_dir exists and is not a directory")
    return phases


def stream_config(args: argparse.Namespace) -> StreamConfig:
    phases = check_args(args)
    return StreamConfig(
        inputs=tuple(os.fspath(p) for p in args.input), vocab=os.fspath(args.vocab), output_dir=args.output_dir,
        phases=phases, phase_dirs=bool(args.phases), masked_lm_prob=args.masked_lm_prob,
        dupe_factor=args.dupe_factor, short_seq_prob=args.short_seq_prob, random_seed=args.random_seed,
        lower_case=args.lower_case, do_whole_word_mask=args.do_whole_word_mask, language=args.language,
        block_docs=args.block_docs, instances_per_shard=args.instances_per_shard, workers=args.workers,
        processes=args.processes, progress=not args.quiet)


def prepare(args: argparse.Namespace) -> Summary:
    """Run every stage for parsed arguments, write prepare_summary.json; return the counts."""
    from bertperf.data.stream import _write_json
    from bertperf.data.tokenize import load_vocab

    cfg = stream_config(args)
    vocab_size = max(load_vocab(cfg.vocab).values()) + 1  # checks the vocab before any work
    summary = run(cfg)
    settings = {k: v for k, v in vars(args).items() if k not in ("quiet", "processes", "workers")}
    _write_json(os.path.join(cfg.output_dir, SUMMARY_NAME), summary_dict(cfg, summary, vocab_size, settings))
    return summary


def summary_line(summary: Summary, output_dir: str) -> str:
    """The last line a run prints: counts, then the skipped bad input."""
    s = summary.skipped
    return (f"documents {summary.documents}, sentences {summary.sentences}, tokens {summary.tokens}, "
            f"instances {summary.instances}, shards {summary.shards} in {output_dir}, {summary.seconds:.1f} s; "
            f"skipped: {s['non_utf8_lines']} non-UTF-8 lines, {s['malformed_pages']} malformed pages, "
            f"{s['empty_documents']} empty documents, {s['one_sentence_documents']} one-sentence documents"
            + (f"; {summary.resumed_blocks} of {summary.blocks} blocks already done" if summary.resumed_blocks else ""))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    keep_freed_memory()  # this process is the CLI's own: a process-wide allocator setting is fine here
    summary = prepare(args)
    print(summary_line(summary, args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(), prog="bertperf prepare"))
