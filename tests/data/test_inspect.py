"""bertperf inspect: instance rendering with the real BERT vocab, statistics against independent
counts, a real shard set, and corrupt shards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bertperf.cli import main as cli_main
from bertperf.data.inspect import format_instance, main, masked_count, shard_stats
from bertperf.data.shards import ShardError, write_shard
from bertperf.data.tokenize import load_vocab
from tests.data.test_shards import random_arrays

TOKENS = "[CLS] the capital of [MASK] is paris . [SEP] it has 2 million people . [SEP]".split()
# masked: position 4 shows [MASK] (true "france"), 6 kept "paris", 10 shows a random "has" (true "is")
MASKED = {4: "france", 6: "paris", 10: "is"}


def hand_instance(vocab: dict[str, int], s: int = 24, p: int = 5, nsp: int = 1) -> dict[str, np.ndarray]:
    n = len(TOKENS)
    ids = np.zeros((1, s), np.int64)
    ids[0, :n] = [vocab[t] for t in TOKENS]
    seg = np.zeros((1, s), np.int64)
    seg[0, 9:n] = 1
    pos = np.zeros((1, p), np.int64)
    mid = np.zeros((1, p), np.int64)
    pos[0, :3] = sorted(MASKED)
    mid[0, :3] = [vocab[MASKED[k]] for k in sorted(MASKED)]
    return {"input_ids": ids, "input_mask": (np.arange(s) < n)[None].astype(np.int64), "segment_ids": seg,
            "masked_lm_positions": pos, "masked_lm_ids": mid, "next_sentence_labels": np.array([nsp])}


def id_to_token(vocab_file: Path) -> list[str]:
    vocab = load_vocab(vocab_file)
    out = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        out[i] = t
    return out


def test_format_instance(vocab_file: Path):
    vocab = load_vocab(vocab_file)
    a = hand_instance(vocab)
    assert format_instance(a, 0, id_to_token(vocab_file)) == (
        "  A: [CLS] the capital of [MASK→france] is paris→(paris) . [SEP]\n"
        "  B: it has→(is) 2 million people . [SEP]\n"
        "  next: random (label 1); 16 real tokens, 3 masked")
    a["next_sentence_labels"][0] = 0
    ids = format_instance(a, 0, None)
    # without a vocab the [MASK] id is unknown: shown→(true) with ids
    assert ids.splitlines()[0].split()[1:6] == ["101", "1996", "3007", "1997", f"103→({vocab['france']})"]
    assert ids.endswith("next: actual (label 0); 16 real tokens, 3 masked")


def reference_stats(parts: list[dict[str, np.ndarray]]):
    lengths, masked = [], []
    for a in parts:
        for row_mask, row_pos in zip(a["input_mask"], a["masked_lm_positions"]):
            lengths.append(int(sum(row_mask)))
            k = 0
            while k < len(row_pos) and row_pos[k] != 0:
                k += 1
            masked.append(k)
    return lengths, masked


@pytest.mark.parametrize("sizes,s,p", [([5], 16, 3), ([3, 0, 7, 1], 32, 5), ([40, 2], 128, 20)])
def test_stats_match_independent_counts(tmp_path: Path, sizes, s, p):
    parts = [random_arrays(n, s, p, seed=k + s) for k, n in enumerate(sizes)]
    files = []
    for k, a in enumerate(parts):
        files.append(str(tmp_path / f"s{k}.hdf5"))
        write_shard(files[-1], a)
    st = shard_stats(files)
    lengths, masked = reference_stats(parts)
    n = sum(sizes)
    assert (st.files, st.instances, st.seq_length, st.max_predictions) == (len(sizes), n, s, p)
    assert st.real_tokens == sum(lengths) and st.masked == sum(masked)
    assert st.masked_fraction == pytest.approx(sum(masked) / sum(lengths), rel=1e-12)
    assert st.random_next == sum(int(a["next_sentence_labels"].sum()) for a in parts)
    hist = st.length_histogram()
    assert sum(c for _, _, c in hist) == n and hist[0][0] == 0 and hist[-1][1] == s
    for lo, hi, count in hist:
        assert count == sum(lo <= x <= hi for x in lengths)
    assert st.masked_counts.tolist() == [masked.count(k) for k in range(p + 1)]


def test_masked_count_edge_cases():
    pos = np.array([[0, 0, 0], [1, 2, 3], [5, 0, 0], [2, 7, 0]])
    assert masked_count(pos).tolist() == [0, 3, 1, 2]


def test_cli_on_real_shards(shard_set, vocab_file: Path, capsys):
    assert cli_main(["inspect", str(shard_set.dir), "-n", "2", "--vocab", str(vocab_file)]) == 0
    out = capsys.readouterr().out
    a = shard_set.arrays
    n = len(a["next_sentence_labels"])
    assert out.count("instance ") == 2 and "  A: [CLS] " in out and "  B: " in out
    assert f"{len(shard_set.files)} shard(s), {n} instances, S=128, P=20" in out
    lengths = a["input_mask"].sum(axis=1)
    # Google's rule: min(P, max(1, round(len * 0.15))) masked per instance
    expected = np.minimum(20, np.maximum(1, np.round(lengths * 0.15))).astype(int)
    st = shard_stats([str(f) for f in shard_set.files], vocab_size=30522)
    np.testing.assert_array_equal(np.bincount(expected, minlength=21), st.masked_counts)
    assert f"masked fraction {expected.sum() / lengths.sum():.4f}" in out
    assert f"{int(a['next_sentence_labels'].sum())} random" in out


def test_corrupt_and_mismatched(tmp_path: Path, vocab_file: Path, capsys):
    good = tmp_path / "good.hdf5"
    write_shard(good, random_arrays(20, 64, 5))
    data = good.read_bytes()
    bad = tmp_path / "d" / "cut.hdf5"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ShardError, match="cut.hdf5"):
        main([str(bad.parent)])
    assert cli_main(["inspect", str(bad)]) == 2
    assert "cut.hdf5" in capsys.readouterr().err
    write_shard(tmp_path / "d" / "zz.hdf5", random_arrays(2, 32, 5))
    bad.unlink()
    write_shard(tmp_path / "d" / "aa.hdf5", random_arrays(2, 64, 5))
    with pytest.raises(ShardError, match="zz.hdf5: sequence length 32"):
        main([str(tmp_path / "d"), "-n", "0"])
    small = tmp_path / "small_vocab.txt"
    small.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    with pytest.raises(ShardError, match=r"aa.hdf5.*vocab size 7\b"):
        main([str(tmp_path / "d" / "aa.hdf5"), "--vocab", str(small)])
    with pytest.raises(ShardError, match="no such shard"):
        main([str(tmp_path / "missing")])
