"""`bertperf prepare` end to end on a slice of the real Wikipedia dump: schema, layout, masking and
NSP statistics, reconstruction against the corpus, determinism, and one-line errors."""
from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from bertperf.data.prepare import main
from bertperf.utils.errors import run_cli
from tests.data.conftest import DUPE, PER_SHARD, PRED, SEED, SEQ, prepare_args

V, PAD, CLS, SEP, MASK = 30522, 0, 101, 102, 103
Z = 4.5  # z-score for statistical bounds: a false failure has probability < 1e-5 per check


def originals(a: dict[str, np.ndarray]) -> np.ndarray:
    """input_ids with the masked positions restored from masked_lm_ids ([N, S])."""
    ids = a["input_ids"].copy()
    rows, slots = np.nonzero(a["masked_lm_positions"])
    ids[rows, a["masked_lm_positions"][rows, slots]] = a["masked_lm_ids"][rows, slots]
    return ids


def test_files_schema_and_summary(shard_set, capsys):
    n = len(shard_set.arrays["next_sentence_labels"])
    assert n > 1000
    # One block (fewer documents than --block_docs), split into parts of PER_SHARD instances.
    assert [f.name for f in shard_set.files] == [f"shard_00000_{k:03d}.hdf5" for k in range(math.ceil(n / PER_SHARD))]
    for f in shard_set.files:
        with h5py.File(f, "r") as h:
            got = {k: (str(h[k].dtype), h[k].shape[1:], h[k].compression) for k in h}
        assert got == {"input_ids": ("int32", (SEQ,), "gzip"), "input_mask": ("int8", (SEQ,), "gzip"),
                       "segment_ids": ("int8", (SEQ,), "gzip"), "masked_lm_positions": ("int32", (PRED,), "gzip"),
                       "masked_lm_ids": ("int32", (PRED,), "gzip"), "next_sentence_labels": ("int8", (), "gzip")}
    summary = json.loads((shard_set.dir / "prepare_summary.json").read_text())
    assert summary["counts"]["instances"] == n and summary["counts"]["shards"] == len(shard_set.files)
    assert summary["skipped"] == {"non_utf8_lines": 0, "malformed_pages": 0, "empty_documents": 0,
                                  "one_sentence_documents": 0}  # this slice has none
    assert summary["counts"]["documents"] == summary["counts"]["documents_read"] == len(shard_set.docs)
    assert summary["counts"]["tokens"] == sum(map(len, shard_set.docs))
    assert summary["stream"]["blocks"] == 1 and summary["phases"][0]["instances"] == n
    assert summary["vocab_size"] == V and summary["settings"]["dupe_factor"] == DUPE


def test_layout(shard_set):
    a = shard_set.arrays
    ids, mask, seg = originals(a), a["input_mask"].astype(int), a["segment_ids"].astype(int)
    lengths = mask.sum(1)
    pos = np.arange(SEQ)[None, :]
    assert np.array_equal(mask, (pos < lengths[:, None]).astype(int))  # 1s then 0s
    assert (a["input_ids"][mask == 0] == PAD).all() and (seg[mask == 0] == 0).all()
    assert (ids[:, 0] == CLS).all() and (ids[np.arange(len(ids)), lengths - 1] == SEP).all()
    assert ((ids == SEP).sum(1) == 2).all() and ((ids == CLS).sum(1) == 1).all()
    first_sep = np.argmax(ids == SEP, axis=1)
    assert (first_sep >= 2).all() and (first_sep <= lengths - 3).all()  # A and B non-empty
    expected_seg = (pos > first_sep[:, None]) & (pos < lengths[:, None])
    assert np.array_equal(seg, expected_seg.astype(int))
    assert lengths.max() == SEQ and (lengths < SEQ).any()  # full targets and short_seq_prob ones


def test_masked_positions_and_counts(shard_set):
    a = shard_set.arrays
    ids, lengths = originals(a), a["input_mask"].sum(1).astype(int)
    p = a["masked_lm_positions"]
    count = (p > 0).sum(1)
    expected = [min(PRED, max(1, int(round(n * 0.15)))) for n in lengths]  # Google's formula
    assert count.tolist() == expected
    for row, m in zip(p, count):
        assert (row[m:] == 0).all() and (np.diff(row[:m]) > 0).all() and row[0] > 0
    rows = np.repeat(np.arange(len(p)), PRED).reshape(p.shape)
    valid = p > 0
    assert (p[valid] < lengths[rows[valid]]).all()
    assert not np.isin(ids[rows[valid], p[valid]], (CLS, SEP)).any()
    assert (a["masked_lm_ids"][~valid] == 0).all()
    # 15% of the tokens (rounding moves each instance by at most 1/2; at S=128 the P=20 cap never binds).
    assert abs(count.sum() - 0.15 * lengths.sum()) <= 0.5 * len(lengths)


def test_masking_80_10_10(shard_set):
    a = shard_set.arrays
    valid = a["masked_lm_positions"] > 0
    rows = np.nonzero(valid)[0]
    shown = a["input_ids"][rows, a["masked_lm_positions"][valid]]
    label = a["masked_lm_ids"][valid]
    m = len(label)
    assert m > 20_000
    # [MASK] 0.8 (+ a random draw of [MASK]), the original 0.1 (+ a random draw of it), another id 0.1.
    p_mask = 0.8 + 0.1 / V
    p_same = 0.1 + 0.1 / V
    p_other = 1 - p_mask - p_same
    for observed, p in ((shown == MASK), p_mask), ((shown == label) & (label != MASK), p_same), \
                       ((shown != MASK) & (shown != label), p_other):
        assert abs(observed.mean() - p) <= Z * math.sqrt(p * (1 - p) / m), (observed.mean(), p)
    # Random replacements are uniform over the whole vocab: mean (V-1)/2, sd V/sqrt(12).
    rand = shown[(shown != MASK) & (shown != label)].astype(float)
    assert abs(rand.mean() - (V - 1) / 2) <= Z * V / math.sqrt(12 * len(rand))


def test_next_sentence_labels_match_the_corpus(shard_set):
    """Unmask each instance, find A and B in the tokenized corpus: 'is next' pairs come from one document,
    B after A; 'random next' pairs from two documents (checked where the spans are unambiguous)."""
    a = shard_set.arrays
    ids, lengths = originals(a), a["input_mask"].sum(1)
    text = "|" + "|".join(" " + " ".join(map(str, d)) + " " for d in shard_set.docs) + "|"
    starts = [i for i, c in enumerate(text) if c == "|"][:-1]

    def where(span) -> list[tuple[int, int]]:
        """(document, offset) of up to 3 occurrences of the token span."""
        key, out = " " + " ".join(map(str, span)) + " ", []
        k = text.find(key)
        while k != -1 and len(out) < 3:
            out.append((bisect.bisect_right(starts, k) - 1, k))
            k = text.find(key, k + 1)
        return out

    checked = {0: 0, 1: 0}
    for k in range(0, len(ids), 2):
        row = ids[k, :lengths[k]]
        sep = int(np.argmax(row == SEP))
        span_a, span_b = row[1:sep], row[sep + 1:-1]
        wa, wb = where(span_a), where(span_b)
        assert wa and wb, f"instance {k}: segment not found in the corpus (wrong masked_lm_ids?)"
        if len(wa) == 1 and len(wb) == 1:
            label = int(a["next_sentence_labels"][k])
            same_doc_after = wa[0][0] == wb[0][0] and wb[0][1] > wa[0][1]
            assert same_doc_after == (label == 0), f"instance {k}: label {label}, A at {wa}, B at {wb}"
            checked[label] += 1
    assert min(checked.values()) > 200


def test_random_next_rate(shard_set):
    """Google's rule: a fair coin, plus every one-sentence chunk, so the rate is at least 1/2 (the coin
    itself is checked exactly in test_instances.py)."""
    labels = shard_set.arrays["next_sentence_labels"]
    assert labels.mean() >= 0.5 - Z * math.sqrt(0.25 / len(labels))


def _digests(d: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.glob("*.hdf5"))}


def test_same_seed_same_bytes_other_seed_differs(shard_set, sample_xml, vocab_file, tmp_path):
    assert main(prepare_args(sample_xml, vocab_file, tmp_path / "same", "--random_seed", str(SEED))) == 0
    assert _digests(tmp_path / "same") == _digests(shard_set.dir)
    assert main(prepare_args(sample_xml, vocab_file, tmp_path / "other", "--random_seed", str(SEED + 1))) == 0
    other = _digests(tmp_path / "other")
    assert set(other.values()).isdisjoint(_digests(shard_set.dir).values())
    # Rerunning into a directory with more shards removes the stale ones.
    assert main(prepare_args(sample_xml, vocab_file, tmp_path / "same", "--random_seed", str(SEED),
                             "--instances_per_shard", "100000")) == 0
    assert [f.name for f in sorted((tmp_path / "same").glob("*.hdf5"))] == ["shard_00000_000.hdf5"]


def test_plain_text_input_and_options(sample_documents, vocab_file, tmp_path, capsys):
    """Google's one-sentence-per-line format, cased, whole-word masking, phase-2 sizes."""
    from bertperf.data.loader import PretrainingDataset
    from bertperf.data.shards import find_shards
    from bertperf.data.tokenize import WordPieceTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(d) for d in sample_documents[:6]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--input", str(corpus), "--vocab", str(vocab_file), "--output_dir", str(out), "--quiet",
            "--max_seq_length", "512", "--max_predictions_per_seq", "80", "--dupe_factor", "1",
            "--no_lower_case", "--do_whole_word_mask"]
    assert main(argv) == 0
    summary = capsys.readouterr().out.strip()
    used = [d for d in sample_documents[:6] if len(d) >= 2]  # one-sentence documents are skipped
    assert summary.startswith(f"documents {len(used)}, sentences {sum(len(d) for d in used)}, tokens ")
    assert "instances" in summary and "shards 1" in summary
    assert summary.endswith(f"; skipped: 0 non-UTF-8 lines, 0 malformed pages, 0 empty documents, "
                            f"{6 - len(used)} one-sentence documents")
    ds = PretrainingDataset(find_shards(out), vocab_size=V)
    assert ds.seq_length == 512 and ds.max_predictions == 80 and len(ds) > 10
    is_sub = WordPieceTokenizer(vocab_file).is_subword
    pieces = 0
    for i in range(len(ds)):
        item = {k: v.numpy() for k, v in ds[i].items()}
        ids, pos = item["input_ids"].copy(), item["masked_lm_positions"]
        pos = pos[pos > 0]
        ids[pos] = item["masked_lm_ids"][: len(pos)]
        assert len(pos) <= min(80, int(round(int(item["input_mask"].sum()) * 0.15)))
        masked = set(pos.tolist())
        for q in range(1, int(item["input_mask"].sum())):  # whole words: a piece is masked iff its word is
            if is_sub[ids[q]] and ids[q - 1] not in (CLS, SEP):  # a segment may start mid-word (truncation)
                assert (q in masked) == (q - 1 in masked)
                pieces += q in masked
    assert pieces > 0


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--input", "--vocab", "--output_dir", "--max_seq_length", "--max_predictions_per_seq",
                 "--masked_lm_prob", "--dupe_factor", "--short_seq_prob", "--random_seed", "--do_lower_case",
                 "--no_lower_case", "--do_whole_word_mask", "--instances_per_shard", "--processes", "--quiet",
                 "--workers", "--block_docs", "--phases", "--language"):
        assert flag in text
    assert "(default 128)" in text and "(default 20)" in text and "(default 12345)" in text


def _bad(tmp_path: Path, kind: str, vocab_file: Path, enwiki: Path | None = None) -> tuple[list[str], str, str]:
    """(argv, path the error must name, words it must contain) for one kind of bad input."""
    inp, vocab = tmp_path / "in.txt", str(vocab_file)
    inp.write_text("A sentence.\nAnother one.\n")
    if kind == "missing vocab":
        vocab = str(tmp_path / "no-vocab.txt")
        named, words = vocab, "vocab file not found"
    elif kind == "not a vocab":
        (tmp_path / "v.txt").write_text("hello\nworld\n")
        vocab = named = str(tmp_path / "v.txt")
        words = "not a BERT vocab"
    elif kind == "empty text":
        inp.write_text("\n\n  \n")
        named, words = str(inp), "empty input"
    elif kind == "empty dump":
        inp = tmp_path / "empty.xml"
        inp.write_text('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">\n'
                       "<siteinfo><sitename>W</sitename></siteinfo>\n</mediawiki>\n")
        named, words = str(inp), "empty input"
    elif kind == "not xml":
        inp = tmp_path / "page.xml"
        inp.write_text("plain words, no markup\n")
        named, words = str(inp), "not a MediaWiki XML dump"
    elif kind == "corrupt bz2":
        inp = tmp_path / "dump.xml.bz2"
        inp.write_bytes(os.urandom(2000))
        named, words = str(inp), "unreadable input"
    elif kind == "truncated dump":
        inp = tmp_path / "cut.xml.bz2"
        inp.write_bytes(Path(enwiki).read_bytes()[:300_000])
        named, words = str(inp), "wikiextractor failed"
    elif kind == "missing input":
        inp = tmp_path / "missing.xml.bz2"
        named, words = str(inp), "not found"
    elif kind == "bad flag":
        return (["--input", str(inp), "--vocab", vocab, "--output_dir", str(tmp_path / "o"),
                 "--max_seq_length", "4"], "--max_seq_length", ">= 5")
    return ["--input", str(inp), "--vocab", vocab, "--output_dir", str(tmp_path / "o"), "--quiet"], named, words


@pytest.mark.parametrize("kind", ["missing vocab", "not a vocab", "empty text", "empty dump", "not xml",
                                  "corrupt bz2", "truncated dump", "missing input", "bad flag"])
def test_bad_input_one_line_error(tmp_path, vocab_file, enwiki_bz2, capsys, kind):
    argv, named, words = _bad(tmp_path, kind, vocab_file, enwiki_bz2)
    assert run_cli(lambda: main(argv), prog="bertperf prepare") == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("bertperf prepare: error: "), err
    assert named in lines[0] and words in lines[0], lines[0]
    assert not list((tmp_path / "o").glob("*.hdf5"))


def test_console_script_error(tmp_path, vocab_file):
    """The installed `bertperf prepare` prints one line and exits 2, no traceback."""
    argv, named, _ = _bad(tmp_path, "not xml", vocab_file)
    exe = Path(sys.executable).with_name("bertperf")
    r = subprocess.run([str(exe), "prepare", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and named in r.stderr and "Traceback" not in r.stderr
