"""`bertperf prepare` at scale: workers, determinism, resume, two phases from one tokenization, input
kinds, bad input counted, and the parent's bounded memory (an instrumented counter)."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bertperf.data import stream
from bertperf.data.prepare import main
from bertperf.data.shards import read_shard

V = 30522
BLOCK = 4


@pytest.fixture(scope="module")
def corpus(sample_documents, tmp_path_factory) -> Path:
    """Google-format text of the real sample's first 13 documents with two sentences or more
    (13 documents / 4 per block: blocks of 4, 4, 5: the short tail is merged into the last block)."""
    docs = [d for d in sample_documents if len(d) >= 2][:13]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return path


def args(inp, vocab, out, *extra) -> list[str]:
    inputs = [str(p) for p in (inp if isinstance(inp, (list, tuple)) else [inp])]
    return ["--input", *inputs, "--vocab", str(vocab), "--output_dir", str(out), "--quiet", "--dupe_factor", "1",
            "--block_docs", str(BLOCK), *extra]


def digests(d: Path) -> dict[str, str]:
    return {str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.rglob("*.hdf5"))}


def summary(d: Path) -> dict:
    return json.loads((d / "prepare_summary.json").read_text())


@pytest.fixture(scope="module")
def one_worker(corpus, vocab_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w1")
    assert main(args(corpus, vocab_file, out, "--workers", "1")) == 0
    return out


def test_blocks_and_same_bytes_for_any_worker_count(one_worker, corpus, vocab_file, tmp_path):
    names = sorted(digests(one_worker))
    assert names == ["shard_00000_000.hdf5", "shard_00001_000.hdf5", "shard_00002_000.hdf5"]
    s = summary(one_worker)
    assert s["stream"]["blocks"] == 3 and s["counts"]["documents"] == 13
    total = sum(len(read_shard(one_worker / n, vocab_size=V)["next_sentence_labels"]) for n in names)
    assert total == s["counts"]["instances"] > 100
    assert main(args(corpus, vocab_file, tmp_path / "again", "--workers", "1")) == 0
    assert digests(tmp_path / "again") == digests(one_worker)  # run to run
    assert main(args(corpus, vocab_file, tmp_path / "w2", "--workers", "2")) == 0
    assert digests(tmp_path / "w2") == digests(one_worker)  # seeds per block, not per worker
    w2 = summary(tmp_path / "w2")
    assert w2["stream"]["workers"] == 2
    # The parent held at most 2W blocks in flight + the block being filled + one of look-ahead.
    assert w2["stream"]["max_documents_held"] <= (2 * 2 + 2) * BLOCK


@pytest.mark.parametrize("other_thread", [False, True], ids=["forked", "spawned"])
def test_workers_forked_or_spawned_give_the_same_bytes(one_worker, corpus, vocab_file, tmp_path, monkeypatch,
                                                      other_thread):
    """Workers are forked (sharing the parent's tokenizer) when this process runs no other thread, and
    spawned otherwise (a thread could hold a lock at fork time); the bytes are those of one worker."""
    import multiprocessing
    import threading

    methods = []
    real = multiprocessing.get_context
    monkeypatch.setattr(stream.multiprocessing, "get_context", lambda m=None: methods.append(m) or real(m))
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    if other_thread:
        thread.start()
    try:
        assert main(args(corpus, vocab_file, tmp_path / "out", "--workers", "2")) == 0
    finally:
        stop.set()
        if other_thread:
            thread.join()
    assert methods == (["spawn"] if other_thread else ["fork"])
    assert digests(tmp_path / "out") == digests(one_worker)


def test_parent_memory_does_not_grow_with_the_input(sample_documents, vocab_file, tmp_path):
    """The same text 1x and 8x: the parent's maximum of documents held (an instrumented count of
    documents read and not yet released) stays at the bound for W=1, 2 blocks."""
    docs = [d for d in sample_documents if len(d) >= 2][:6]
    held = []
    for times in (1, 8):
        path = tmp_path / f"x{times}.txt"
        path.write_text("\n\n".join("\n".join(d) for d in docs * times) + "\n", encoding="utf-8")
        out = tmp_path / f"out{times}"
        assert main(args(path, vocab_file, out, "--short_seq_prob", "0", "--max_seq_length", "32",
                         "--max_predictions_per_seq", "5")) == 0
        s = summary(out)
        assert s["counts"]["documents"] == 6 * times
        held.append(s["stream"]["max_documents_held"])
    assert held[1] <= 2 * BLOCK < 6 * 8
    assert held[0] <= 2 * BLOCK


def test_resume_after_a_crash(one_worker, corpus, vocab_file, tmp_path, monkeypatch):
    """A run that dies in block 2 leaves blocks 0-1 finished; the rerun skips them, cleans the
    temporary files, remakes a shard whose bytes changed, and ends with the uninterrupted bytes."""
    out = tmp_path / "out"
    real = stream.process_block

    def dying(ctx, block, docs, digest):
        if block == 2:
            (out / "shard_00002_000.hdf5.x1y2.tmp").write_bytes(b"half a shard")  # what a kill leaves
            raise KeyboardInterrupt
        return real(ctx, block, docs, digest)

    monkeypatch.setattr(stream, "process_block", dying)
    with pytest.raises(KeyboardInterrupt):
        main(args(corpus, vocab_file, out))
    assert sorted(digests(out)) == ["shard_00000_000.hdf5", "shard_00001_000.hdf5"]
    assert not (out / "shard_00002_000.hdf5").exists()

    calls = []
    monkeypatch.setattr(stream, "process_block", lambda ctx, b, d, g: calls.append(b) or real(ctx, b, d, g))
    assert main(args(corpus, vocab_file, out)) == 0
    assert calls == [2]
    assert digests(out) == digests(one_worker)
    assert not list(out.glob("*.tmp"))
    s = summary(out)
    assert s["stream"]["resumed_blocks"] == 2
    timing = ("seconds", "cpu_seconds")
    assert {k: v for k, v in s["counts"].items() if k not in timing} == \
        {k: v for k, v in summary(one_worker)["counts"].items() if k not in timing}

    # A changed shard (here: one byte flipped) is not trusted: its block is made again.
    shard = out / "shard_00001_000.hdf5"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    calls.clear()
    assert main(args(corpus, vocab_file, out)) == 0
    assert calls == [1] and digests(out) == digests(one_worker)
    # Other settings: nothing is reused.
    calls.clear()
    assert main(args(corpus, vocab_file, out, "--random_seed", "7")) == 0
    assert calls == [0, 1, 2]


def test_two_phases_from_one_tokenization(corpus, vocab_file, tmp_path, monkeypatch):
    calls = []
    real = stream.tokenize_block
    monkeypatch.setattr(stream, "tokenize_block", lambda ctx, docs: calls.append(len(docs)) or real(ctx, docs))
    out = tmp_path / "out"
    assert main(args(corpus, vocab_file, out, "--phases", "128:20,512:80")) == 0
    assert calls == [4, 4, 5]  # each block tokenized once for both phases
    s = summary(out)
    assert [(p["name"], p["dir"], p["max_seq_length"], p["max_predictions_per_seq"]) for p in s["phases"]] == \
        [("phase1_128", "phase1_128", 128, 20), ("phase2_512", "phase2_512", 512, 80)]
    assert not list(out.glob("*.hdf5"))
    tokens_seen = {}
    for phase, (seq, pred) in zip(s["phases"], ((128, 20), (512, 80))):
        files = sorted((out / phase["dir"]).glob("*.hdf5"))
        assert [f.name for f in files] == [f"shard_{k:05d}_000.hdf5" for k in range(3)]
        arrays = [read_shard(f, vocab_size=V) for f in files]
        assert all(a["input_ids"].shape[1] == seq and a["masked_lm_positions"].shape[1] == pred for a in arrays)
        lengths = np.concatenate([a["input_mask"].sum(1) for a in arrays])
        assert len(lengths) == phase["instances"]
        assert lengths.max() == seq  # full-length instances at both S
        ids = np.concatenate([a["input_ids"][a["input_mask"] == 1] for a in arrays])
        tokens_seen[seq] = set(ids.tolist())
    # Both phases draw from the same tokenized text; phase 2 has ~4x fewer, longer instances.
    assert s["phases"][0]["instances"] > 2.5 * s["phases"][1]["instances"]
    assert len(tokens_seen[128] & tokens_seen[512]) > 0.8 * len(tokens_seen[512])


def test_folder_and_compressed_text_inputs(sample_documents, vocab_file, tmp_path):
    """A WikiExtractor output folder (paragraphs: split into sentences) and a .gz Google-format file."""
    folder = tmp_path / "extracted"
    docs = [d for d in sample_documents if len(d) >= 4][:4]
    for k, d in enumerate(docs):
        sub = folder / ("AA" if k < 2 else "AB")
        sub.mkdir(parents=True, exist_ok=True)
        para = " ".join(d[:len(d) // 2]), " ".join(d[len(d) // 2:])  # two paragraphs
        with open(sub / f"wiki_{k % 2:02d}", "w", encoding="utf-8") as f:
            f.write(f'<doc id="{k}" url="u" title="T{k}">\nT{k}\n\n{para[0]}\n{para[1]}\n</doc>\n')
    text = tmp_path / "google.txt.gz"
    with gzip.open(text, "wt", encoding="utf-8") as f:
        f.write("First sentence here.\nSecond one follows.\n\nAnother document starts.\nAnd it ends.\n")
    out = tmp_path / "out"
    assert main(args([folder, text], vocab_file, out)) == 0
    s = summary(out)
    assert s["counts"]["documents"] == 6
    from bertperf.data.extract import split_sentences
    expected = sum(len(split_sentences(" ".join(d[:len(d) // 2]))) + len(split_sentences(" ".join(d[len(d) // 2:])))
                   for d in docs) + 4
    assert s["counts"]["sentences"] == expected


def test_bad_input_is_skipped_and_counted(vocab_file, tmp_path, capsys):
    folder = tmp_path / "extracted" / "AA"
    folder.mkdir(parents=True)
    good = "The first sentence is here. The second sentence follows it. A third one ends the text."
    (folder / "wiki_00").write_bytes(
        b'<doc id="1" url="u" title="Good">\nGood\n\n' + good.encode() + b"\n</doc>\n"
        b'<doc id="2" url="u" title="Bad bytes">\nBad bytes\n\n\xff\xfe broken \xc3\x28 line\n' + good.encode()
        + b"\n</doc>\n"
        b'<doc id="3" url="u" title="Empty">\nEmpty\n\n</doc>\n'
        b'<doc id="4" url="u" title="Short">\nShort\n\nOnly one sentence here.\n</doc>\n'
        b'<doc id="5" url="u" title="Cut">\nCut\n\nThis page. Never ends.\n'  # malformed: no </doc>
        b'<doc id="6" url="u" title="Good again">\nGood again\n\n' + good.encode() + b"\n</doc>\n"
        b'<doc id="7" url="u" title="Controls">\nControls\n\n\x07\x07 \x01\x02\n</doc>\n')  # empty after cleaning
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"One good sentence.\nAnd another good one.\n\n\xc3\x28\xa0\xa1\n\nLonely sentence.\n")
    out = tmp_path / "out"
    assert main(args([folder.parent, plain], vocab_file, out)) == 0
    s = summary(out)
    assert s["skipped"] == {"non_utf8_lines": 2, "malformed_pages": 1, "empty_documents": 2,
                            "one_sentence_documents": 2}
    assert s["counts"]["documents"] == 4 and s["counts"]["documents_read"] == 7
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith("skipped: 2 non-UTF-8 lines, 1 malformed pages, 2 empty documents, "
                         "2 one-sentence documents")


def test_resume_after_sigkill(sample_documents, vocab_file, tmp_path):
    """Kill a 2-worker run (the whole process group, SIGKILL) once some blocks are recorded; the
    rerun finishes it with the bytes of an uninterrupted run and leaves no temporary file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    docs = [d for d in sample_documents if len(d) >= 2][:12] * 3
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    argv = args(corpus, vocab_file, tmp_path / "killed", "--workers", "2", "--dupe_factor", "2")
    proc = subprocess.Popen([sys.executable, "-m", "bertperf.data.prepare", *argv], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "killed" / ".prepare"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(records.glob("block_*.json"))) < 2:
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(records.glob("block_*.json")))
    assert main(argv) == 0
    s = summary(tmp_path / "killed")
    assert s["stream"]["blocks"] == 9
    if killed:  # the usual case; a very fast machine may finish first
        assert 2 <= s["stream"]["resumed_blocks"] == done_before < 9
    assert main(args(corpus, vocab_file, tmp_path / "clean", "--dupe_factor", "2")) == 0
    assert digests(tmp_path / "killed") == digests(tmp_path / "clean")
    assert not list((tmp_path / "killed").rglob("*.tmp"))
