"""The engine of `bertperf prepare`: streaming, parallel, resumable shard creation, one or two phases.

Data flow::

    parent:  inputs --read_raw_documents (streams; wikiextractor through a pipe)--> raw documents
             --> blocks of `block_docs` documents (block k = documents k*B .. k*B+B-1 of the input;
                 a last block shorter than B/2 is merged into the one before)
             --> N worker processes (at most 2N blocks in flight; started before the input is
                 opened, forked with the parent's tokenizer where that is safe: `start_pool`)
    worker:  block --split sentences--> --tokenize once (WordPiece, Rust)--> drop empty sentences,
             skip (and count) empty and one-sentence documents
             --> for each phase (S, P): Google's instance algorithm (`bertperf.data.instances`)
                 with a generator seeded from (random_seed, k, S, P), instances shuffled within
                 the block --> shard file(s) `<phase dir>/shard_KKKKK_JJJ.hdf5` (tmp + rename)
             --> block record `<out>/.prepare/block_KKKKK.json` (tmp + rename) listing the files,
                 their sha256 and the counts.

Deviation from Google's script: the "random next" segment B of an NSP pair is drawn from another
document of the same block, not of the whole corpus, and instances are shuffled within a block,
not across the corpus (the loader shuffles across shards). With the default B = 1000 documents
the pool is large; a corpus of fewer than B documents is one block, i.e. Google's algorithm on
the whole corpus (with the block's derived seed).

Determinism: every random draw of block k comes from its own seed, and block boundaries depend
only on the input, so the output bytes are identical from run to run and for ANY worker count.

Resume: a block whose record exists, was written with the same settings (fingerprint of the
flags, the vocab file and the block's text) and whose files all exist with the recorded sha256 is
skipped. A shard appears under its final name only complete (`shards.write_shard` writes a
temporary file and renames it), and the record is written after the shards, so a killed run
leaves at worst `*.tmp` files (removed at the next start) and unrecorded shards (rewritten).
The input is read again on restart (an XML dump is extracted again); finished blocks are not
tokenized again.

Memory bound (B = block_docs, W = workers, d = dupe_factor, S = max_seq_length, T = tokens in a
block, N ~ d*T/(0.9*S) instances of a phase):
* parent: at most (2W + 2) * B raw documents (2W blocks in flight, the block being filled and one
  block of look-ahead), plus the wikiextractor subprocess when reading a dump, plus ~1 KB per
  finished block (its record, kept for the summary: 6 MB for all of English Wikipedia at B = 1000);
* each worker: one block: its text, T token ids as Python lists (~8 bytes each plus ~60 per
  sentence), the corpus as one int32 array (4T), and for one phase at a time the padded arrays
  and masking temporaries (~17*S*N bytes, ~20*d*T), plus the tokenizer's word cache (at most
  `tokenize.CACHE_WORDS` words, ~30 MB). Up to 32 MiB of freed heap is kept for the next block
  (`keep_freed_memory`).
Example: Wikipedia articles average ~600 tokens, so B = 1000, d = 10 is ~130 MB per worker.
None of it grows with the size of the input; `Summary.max_documents_held` reports the parent's
measured maximum (an instrumented count of documents read and not yet released).
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

from bertperf.data.extract import AUTO, RawDocument, ReadStats, detect_kind, read_raw_documents, split_document
from bertperf.utils.atomic import atomic_write_json
from bertperf.utils.errors import BertperfError
from bertperf.utils.malloc import keep_freed_memory

log = logging.getLogger(__name__)

SHARD_NAME = "shard_{block:05d}_{part:03d}.hdf5"
SHARD_PATTERN = re.compile(r"shard_\d{5}(_\d{3})?\.hdf5")
RECORD_DIR = ".prepare"
RECORD_NAME = "block_{block:05d}.json"
RECORD_PATTERN = re.compile(r"block_(\d{5,})\.json")
TMP_PATTERN = re.compile(r"(shard_|block_|prepare_summary\.json).*\.tmp")
IN_FLIGHT_PER_WORKER = 2
RECORD_VERSION = 1


@dataclass(frozen=True)
class Phase:
    """One output layout: sequence length S and maximum predictions P."""

    max_seq_length: int
    max_predictions_per_seq: int

    def dir_name(self, index: int) -> str:
        """`phase1_128`, `phase2_512`, ... (1-based index, then S)."""
        return f"phase{index + 1}_{self.max_seq_length}"


def parse_phases(text: str) -> tuple[Phase, ...]:
    """"128:20,512:80" -> (Phase(128, 20), Phase(512, 80)); BertperfError on bad syntax."""
    phases = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", item)
        if not m:
            raise BertperfError(f"--phases: cannot read {item!r}; use S:P pairs such as 128:20,512:80")
        phases.append(Phase(int(m.group(1)), int(m.group(2))))
    if len({p.max_seq_length for p in phases}) != len(phases):
        raise BertperfError(f"--phases: sequence lengths must differ (got {text!r})")
    return tuple(phases)


@dataclass(frozen=True)
class StreamConfig:
    """Everything a run needs; workers receive it pickled. `phase_dirs` False writes the only phase
    into `output_dir` itself (the default single-phase layout)."""

    inputs: tuple[str, ...]
    vocab: str
    output_dir: str
    phases: tuple[Phase, ...] = (Phase(128, 20),)
    phase_dirs: bool = False
    masked_lm_prob: float = 0.15
    dupe_factor: int = 10
    short_seq_prob: float = 0.1
    random_seed: int = 12345
    lower_case: bool = True
    do_whole_word_mask: bool = False
    language: str = AUTO
    block_docs: int = 1000
    instances_per_shard: int | None = None
    workers: int = 1
    processes: int = 2  # wikiextractor
    progress: bool = False

    def phase_dir(self, index: int) -> str:
        """Directory of phase `index`, relative to output_dir ("" for the single-phase layout)."""
        return self.phases[index].dir_name(index) if self.phase_dirs else ""

    def output_settings(self) -> dict:
        """The settings that determine the output bytes (not workers, processes, progress)."""
        return {"phases": [[p.max_seq_length, p.max_predictions_per_seq] for p in self.phases],
                "phase_dirs": self.phase_dirs, "masked_lm_prob": self.masked_lm_prob,
                "dupe_factor": self.dupe_factor, "short_seq_prob": self.short_seq_prob,
                "random_seed": self.random_seed, "lower_case": self.lower_case,
                "do_whole_word_mask": self.do_whole_word_mask, "language": self.language,
                "block_docs": self.block_docs, "instances_per_shard": self.instances_per_shard}


@dataclass
class Summary:
    """Counts of a run (also for resumed blocks, from their records)."""

    documents: int = 0  # documents used (two sentences or more)
    sentences: int = 0
    tokens: int = 0
    instances: int = 0  # all phases
    shards: int = 0  # all phases
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process and its children (workers, wikiextractor)
    documents_read: int = 0
    skipped: dict = field(default_factory=lambda: {"non_utf8_lines": 0, "malformed_pages": 0,
                                                   "empty_documents": 0, "one_sentence_documents": 0})
    phases: list = field(default_factory=list)  # per phase: name, dir, S, P, instances, shards, files
    blocks: int = 0
    resumed_blocks: int = 0
    max_documents_held: int = 0  # the parent's largest number of documents in memory at once
    workers: int = 1


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------

@dataclass
class _Context:
    cfg: StreamConfig
    fingerprint: str
    tokenizer: object
    special: object


_WORKER: _Context | None = None


def _make_context(cfg: StreamConfig, fingerprint: str) -> _Context:
    from bertperf.data.instances import SpecialIds
    from bertperf.data.tokenize import WordPieceTokenizer

    tok = WordPieceTokenizer(cfg.vocab, lower_case=cfg.lower_case)
    special = SpecialIds(cls=tok.cls_id, sep=tok.sep_id, mask=tok.mask_id, vocab_size=tok.vocab_size,
                         is_subword=tok.is_subword)
    return _Context(cfg, fingerprint, tok, special)


def _worker_imports() -> None:
    """Import what `process_block` imports lazily (so forked workers start with it loaded)."""
    import bertperf.data.instances  # noqa: F401
    import bertperf.data.shards  # noqa: F401
    import h5py  # noqa: F401


def _init_worker(cfg: StreamConfig, fingerprint: str) -> None:
    """Initializer of a spawned worker: one tokenizer per worker process, single-threaded (one core
    per worker)."""
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    keep_freed_memory()
    _WORKER = _make_context(cfg, fingerprint)


def _adopt_context(ctx: _Context) -> None:
    """Initializer of a forked worker: `ctx` (tokenizer included) is the parent's, inherited by the
    fork, not pickled."""
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    keep_freed_memory()
    _WORKER = ctx


def block_seed(random_seed: int, block: int, phase: Phase) -> int:
    """The seed of one block and phase: independent of the worker that runs it."""
    key = f"bertperf-prepare/{random_seed}/{block}/{phase.max_seq_length}/{phase.max_predictions_per_seq}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: str, data: dict) -> None:
    """Atomic JSON write (temporary file in the same directory, then rename)."""
    atomic_write_json(path, data, indent=1, sort_keys=True)


def tokenize_block(ctx: _Context, docs: list[RawDocument]) -> tuple[list[list[list[int]]], dict]:
    """Split and tokenize one block (one tokenizer call); return the usable documents (two non-empty
    sentences or more) and the counts."""
    split = [split_document(d, ctx.cfg.language) for d in docs]
    flat = [s for d in split for s in d]
    ids = ctx.tokenizer.encode_many(flat)
    counts = {"documents_read": len(docs), "documents": 0, "sentences": 0, "tokens": 0,
              "empty_documents": 0, "one_sentence_documents": 0}
    out: list[list[list[int]]] = []
    k = 0
    for d in split:
        sentences = [s for s in ids[k:k + len(d)] if s]
        k += len(d)
        if not sentences:
            counts["empty_documents"] += 1
        elif len(sentences) == 1:
            counts["one_sentence_documents"] += 1
        else:
            out.append(sentences)
            counts["documents"] += 1
            counts["sentences"] += len(sentences)
            counts["tokens"] += sum(map(len, sentences))
    return out, counts


def _write_phase(ctx: _Context, block: int, index: int, documents: list[list[list[int]]]) -> dict:
    """Instances of one phase of a block -> shard file(s); returns the phase's part of the record."""
    from bertperf.data.instances import InstanceConfig, create_instance_arrays
    from bertperf.data.shards import write_shard

    cfg, phase = ctx.cfg, ctx.cfg.phases[index]
    icfg = InstanceConfig(phase.max_seq_length, phase.max_predictions_per_seq, cfg.masked_lm_prob,
                          cfg.short_seq_prob, cfg.do_whole_word_mask)
    arrays = create_instance_arrays(documents, icfg, ctx.special, cfg.dupe_factor,
                                    block_seed(cfg.random_seed, block, phase))
    n = len(arrays["next_sentence_labels"])
    per = cfg.instances_per_shard or max(1, n)
    rel_dir = cfg.phase_dir(index)
    files = []
    for j in range(math.ceil(n / per)):
        rel = os.path.join(rel_dir, SHARD_NAME.format(block=block, part=j))
        path = os.path.join(cfg.output_dir, rel)
        write_shard(path, {k: v[j * per:(j + 1) * per] for k, v in arrays.items()})
        files.append({"path": rel, "instances": min(per, n - j * per), "sha256": _sha256(path)})
    return {"instances": n, "files": files}


def process_block(ctx: _Context, block: int, docs: list[RawDocument], digest: str) -> dict:
    """Tokenize a block once, write every phase's shards, then the block record; return the record."""
    documents, counts = tokenize_block(ctx, docs)
    phases = [_write_phase(ctx, block, i, documents) for i in range(len(ctx.cfg.phases))]
    record = {"version": RECORD_VERSION, "block": block, "fingerprint": ctx.fingerprint, "text_sha256": digest,
              "counts": counts, "phases": phases}
    _write_json(record_path(ctx.cfg.output_dir, block), record)
    return record


def _process_in_worker(block: int, docs: list[RawDocument], digest: str) -> dict:
    assert _WORKER is not None, "worker not initialised"
    return process_block(_WORKER, block, docs, digest)


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------

def record_path(output_dir: str, block: int) -> str:
    return os.path.join(output_dir, RECORD_DIR, RECORD_NAME.format(block=block))


def block_digest(docs: list[RawDocument]) -> str:
    """sha256 of a block's text (detects a changed input on resume)."""
    h = hashlib.sha256()
    for d in docs:  # per document: P or S, every line + "\n", then a NUL byte (one update each)
        h.update(b"".join((b"P" if d.paragraphs else b"S", "\n".join(d.lines).encode("utf-8", "surrogatepass"),
                           b"\n\x00" if d.lines else b"\x00")))
    return h.hexdigest()


def fingerprint(cfg: StreamConfig) -> str:
    """Hash of the settings that determine the output and of the vocab file's bytes."""
    h = hashlib.sha256(json.dumps(cfg.output_settings(), sort_keys=True).encode())
    h.update(_sha256(cfg.vocab).encode())
    return h.hexdigest()


def load_finished(output_dir: str, block: int, fp: str, digest: str) -> dict | None:
    """The record of a finished block when it is valid for this run (same fingerprint and text,
    every file present with its recorded sha256), else None."""
    path = record_path(output_dir, block)
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION or rec.get("block") != block
            or rec.get("fingerprint") != fp or rec.get("text_sha256") != digest):
        return None
    try:
        for phase in rec["phases"]:
            for f in phase["files"]:
                full = os.path.join(output_dir, f["path"])
                if not os.path.isfile(full) or _sha256(full) != f["sha256"]:
                    log.info("block %d: %s is missing or changed; the block is made again", block, f["path"])
                    return None
    except (KeyError, TypeError):
        return None
    return rec


def blocks_of(docs: Iterable[RawDocument], block_docs: int) -> Iterator[list[RawDocument]]:
    """Consecutive blocks of `block_docs` documents; a last block of fewer than block_docs/2
    documents is merged into the previous one (a tiny block would draw "random next" segments
    from too few documents). Holds at most two blocks."""
    prev: list[RawDocument] | None = None
    cur: list[RawDocument] = []
    for d in docs:
        cur.append(d)
        if len(cur) == block_docs:
            if prev is not None:
                yield prev
            prev, cur = cur, []
    if prev is not None and cur and len(cur) < block_docs / 2:
        prev.extend(cur)
        cur = []
    if prev is not None:
        yield prev
    if cur:
        yield cur


class _HeldCounter:
    """Instrumented count of the documents alive in the parent: read and not yet released (a block
    is released when it is finished, skipped or its worker result collected)."""

    def __init__(self) -> None:
        self.read = 0
        self.released = 0
        self.max_held = 0

    def add(self) -> None:
        self.read += 1
        self.max_held = max(self.max_held, self.read - self.released)

    def release(self, n: int) -> None:
        self.released += n


def _counted_inputs(cfg: StreamConfig, stats: ReadStats, counter: _HeldCounter) -> Iterator[RawDocument]:
    """Raw documents of every input in order; an input without any document is an error."""
    for path in cfg.inputs:
        before = counter.read
        for doc in read_raw_documents([path], processes=cfg.processes, quiet=not cfg.progress, stats=stats):
            counter.add()
            yield doc
        if counter.read == before:
            raise BertperfError(f"{path}: empty input, no document with text found (expected a Wikipedia XML dump, "
                                "WikiExtractor output or one-sentence-per-line text)")


def _clean_tmp(dirs: Iterable[str]) -> None:
    for d in dirs:
        if os.path.isdir(d):
            for name in os.listdir(d):
                if TMP_PATTERN.fullmatch(name):
                    log.info("removing %s, left by an interrupted run", os.path.join(d, name))
                    os.unlink(os.path.join(d, name))


def _remove_stale(cfg: StreamConfig, records: dict[int, dict]) -> None:
    """Remove shards and records that this run did not produce (from an earlier, larger run)."""
    keep = {os.path.normpath(os.path.join(cfg.output_dir, f["path"]))
            for rec in records.values() for ph in rec["phases"] for f in ph["files"]}
    for i in range(len(cfg.phases)):
        d = os.path.join(cfg.output_dir, cfg.phase_dir(i))
        for name in sorted(os.listdir(d)):
            full = os.path.normpath(os.path.join(d, name))
            if SHARD_PATTERN.fullmatch(name) and full not in keep:
                log.info("removing stale shard %s", full)
                os.unlink(full)
    rdir = os.path.join(cfg.output_dir, RECORD_DIR)
    for name in os.listdir(rdir):
        m = RECORD_PATTERN.fullmatch(name)
        if m and int(m.group(1)) not in records:
            os.unlink(os.path.join(rdir, name))


def _summarize(cfg: StreamConfig, records: dict[int, dict], stats: ReadStats, summary: Summary) -> None:
    for k in sorted(records):
        c = records[k]["counts"]
        summary.documents += c["documents"]
        summary.documents_read += c["documents_read"]
        summary.sentences += c["sentences"]
        summary.tokens += c["tokens"]
        summary.skipped["empty_documents"] += c["empty_documents"]
        summary.skipped["one_sentence_documents"] += c["one_sentence_documents"]
    summary.skipped["non_utf8_lines"] += stats.non_utf8_lines
    summary.skipped["malformed_pages"] += stats.malformed_pages
    summary.skipped["empty_documents"] += stats.empty_documents
    for i, phase in enumerate(cfg.phases):
        files = [f for k in sorted(records) for f in records[k]["phases"][i]["files"]]
        n = sum(f["instances"] for f in files)
        summary.phases.append({"name": phase.dir_name(i), "dir": cfg.phase_dir(i) or ".",
                               "max_seq_length": phase.max_seq_length,
                               "max_predictions_per_seq": phase.max_predictions_per_seq,
                               "instances": n, "shards": len(files), "files": [f["path"] for f in files]})
        summary.instances += n
        summary.shards += len(files)
    summary.blocks = len(records)


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (workers, wikiextractor)."""
    import resource

    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def _fork_is_safe() -> bool:
    """True when the only Python threads are this one and tqdm's monitor."""
    me = threading.current_thread()
    return all(t is me or type(t).__name__ == "TMonitor" for t in threading.enumerate())


def start_pool(cfg: StreamConfig, fp: str, ctx: _Context) -> cf.ProcessPoolExecutor:
    """`cfg.workers` worker processes, started now (before any input is opened, so that they hold
    no file or pipe of the parent).

    Where `fork` exists and this process runs no other Python thread (tqdm's monitor aside: it
    only takes tqdm's own lock, which workers never use), the workers are forked from this process
    after `ctx` is built and the worker modules are imported: they start in about a millisecond
    and share the tokenizer and the vocab by copy-on-write. Otherwise (macOS/Windows, or another
    thread that could hold a lock, e.g. h5py's, at fork time) they are spawned and each imports
    the modules and builds its own tokenizer (~0.2 s of CPU each). The output is the same either way.
    """
    if "fork" in multiprocessing.get_all_start_methods() and _fork_is_safe():
        _worker_imports()
        pool = cf.ProcessPoolExecutor(max_workers=cfg.workers, mp_context=multiprocessing.get_context("fork"),
                                      initializer=_adopt_context, initargs=(ctx,))
    else:
        pool = cf.ProcessPoolExecutor(max_workers=cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_init_worker, initargs=(cfg, fp))
    pool.submit(os.getpid)  # starts the processes (all of them with fork; spawn starts one per task)
    return pool


def run(cfg: StreamConfig) -> Summary:
    """Create the shards of every phase (see the module docstring); return the counts."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    for path in cfg.inputs:  # fail fast, before a long extraction of another input
        if not os.path.isdir(path):
            detect_kind(path)
    fp = fingerprint(cfg)
    ctx = _make_context(cfg, fp)
    dirs = [os.path.join(cfg.output_dir, cfg.phase_dir(i)) for i in range(len(cfg.phases))]
    dirs.append(os.path.join(cfg.output_dir, RECORD_DIR))
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    _clean_tmp(dirs + [cfg.output_dir])

    summary = Summary(workers=max(1, cfg.workers))
    stats = ReadStats()
    records: dict[int, dict] = {}
    pending: dict[cf.Future, int] = {}  # future -> documents it holds
    pool = start_pool(cfg, fp, ctx) if cfg.workers > 1 else None  # before tqdm starts its monitor thread
    bar = tqdm(desc="blocks", unit="block", disable=not cfg.progress, mininterval=0.5)

    counter = _HeldCounter()

    def collect(done: Iterable[cf.Future]) -> None:
        for fut in done:
            counter.release(pending.pop(fut))
            rec = fut.result()
            records[rec["block"]] = rec
            bar.update(1)

    try:
        for k, block in enumerate(blocks_of(_counted_inputs(cfg, stats, counter), cfg.block_docs)):
            digest = block_digest(block)
            rec = load_finished(cfg.output_dir, k, fp, digest)
            if rec is not None:
                records[k] = rec
                summary.resumed_blocks += 1
                counter.release(len(block))
                bar.update(1)
                continue
            if pool is None:
                records[k] = process_block(ctx, k, block, digest)
                counter.release(len(block))
                bar.update(1)
                continue
            while len(pending) >= IN_FLIGHT_PER_WORKER * cfg.workers:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                collect(done)
            pending[pool.submit(_process_in_worker, k, block, digest)] = len(block)
            del block
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            collect(done)
    finally:
        bar.close()
        if pool is not None:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    summary.max_documents_held = counter.max_held
    _remove_stale(cfg, records)
    _summarize(cfg, records, stats, summary)
    if summary.tokens == 0:
        raise BertperfError(f"{', '.join(cfg.inputs)}: empty input, no document with two sentences or more "
                            "(a BERT instance needs a segment A and a next segment B)")
    summary.seconds = round(time.perf_counter() - t0, 3)
    summary.cpu_seconds = round(_cpu_seconds() - cpu0, 3)
    return summary


def summary_dict(cfg: StreamConfig, summary: Summary, vocab_size: int, settings: dict) -> dict:
    """The content of prepare_summary.json."""
    s = asdict(summary)
    counts = {k: s[k] for k in ("documents", "sentences", "tokens", "instances", "shards", "seconds",
                                "cpu_seconds", "documents_read")}
    return {"settings": settings, "vocab_size": vocab_size, "counts": counts, "skipped": s["skipped"],
            "phases": s["phases"],
            "stream": {k: s[k] for k in ("blocks", "resumed_blocks", "max_documents_held", "workers")}
            | {"block_docs": cfg.block_docs}}
