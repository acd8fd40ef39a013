"""convert-tfrecord: CRC32C against known vectors, and TFRecord files written here by an encoder
independent of the decoder (bitwise CRC, hand-rolled protobuf), including corrupt ones."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from bertperf.cli import main as cli_main
from bertperf.convert.tfrecord import (TFRecordError, crc32c, crc32c_many, decode_packed_varints, main,
                                       masked_crc, parse_example, read_records)
from bertperf.data.shards import SCHEMA, read_shard
from tests.data.test_shards import random_arrays

# ---- an independent encoder ------------------------------------------------------------------


def bitwise_crc32c(data: bytes) -> int:
    """CRC-32C bit by bit (no table), the definition."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", mask(bitwise_crc32c(header))) + data
            + struct.pack("<I", mask(bitwise_crc32c(data))))


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def field(number: int, wire: int, payload: bytes | int) -> bytes:
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 5:
        return key + payload
    return key + varint(len(payload)) + payload


def int64_feature(values, packed: bool) -> bytes:
    if packed:
        lst = field(1, 2, b"".join(varint(int(v)) for v in values))
    else:
        lst = b"".join(field(1, 0, int(v)) for v in values)
    return field(3, 2, lst)


def float_feature(values, packed: bool) -> bytes:
    raw = [struct.pack("<f", float(v)) for v in values]
    lst = field(1, 2, b"".join(raw)) if packed else b"".join(field(1, 5, r) for r in raw)
    return field(2, 2, lst)


def google_example(a: dict[str, np.ndarray], i: int, packed: bool, drop: str | None = None) -> bytes:
    """Instance i of our arrays as Google's create_pretraining_data.py writes it: padded slots get
    weight 0 (and here garbage position/id, which the converter must turn into 0)."""
    real = a["masked_lm_positions"][i] > 0
    pos = np.where(real, a["masked_lm_positions"][i], 3)
    ids = np.where(real, a["masked_lm_ids"][i], 17)
    feats = {
        "input_ids": int64_feature(a["input_ids"][i], packed),
        "input_mask": int64_feature(a["input_mask"][i], packed),
        "segment_ids": int64_feature(a["segment_ids"][i], packed),
        "masked_lm_positions": int64_feature(pos, packed),
        "masked_lm_ids": int64_feature(ids, packed),
        "masked_lm_weights": float_feature(real.astype(np.float32), packed),
        "next_sentence_labels": int64_feature([a["next_sentence_labels"][i]], packed),
        "extra_bytes": field(1, 2, field(1, 2, b"ignored") + field(1, 2, b"")),  # an unknown feature
    }
    keys = sorted(feats, reverse=i % 2 == 1)  # map order does not matter
    body = b"".join(field(1, 2, field(1, 2, k.encode()) + field(2, 2, feats[k])) for k in keys if k != drop)
    return field(7, 0, 99) + field(1, 2, body)  # plus an unknown Example field


def write_tfrecord(path: Path, a: dict[str, np.ndarray], packed: bool, drop_at: int | None = None) -> None:
    n = len(a["next_sentence_labels"])
    path.write_bytes(b"".join(frame(google_example(a, i, packed, "masked_lm_ids" if i == drop_at else None))
                              for i in range(n)))


# ---- tests ----------------------------------------------------------------------------------


def test_crc32c_known_vectors():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    # RFC 3720 (iSCSI) B.4
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283  # continuation


def test_crc32c_many_matches_bitwise():
    rng = np.random.default_rng(0)
    msgs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in [0, 1, 2, 3, 4, 5, 7, 64, 999, 1500]]
    msgs += [bytes(40), b"\xff" * 9]
    assert crc32c_many(msgs).tolist() == [bitwise_crc32c(m) for m in msgs]
    assert [crc32c(m) for m in msgs] == [bitwise_crc32c(m) for m in msgs]
    assert [int(x) for x in masked_crc(crc32c_many(msgs))] == [mask(bitwise_crc32c(m)) for m in msgs]


def test_packed_varints():
    values = [0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1, 2**40 + 5, 2**63 - 1, -1, -2**63, -12345]
    got = decode_packed_varints(b"".join(varint(v) for v in values))
    assert got.dtype == np.int64 and got.tolist() == values


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("n,s,p", [(1, 8, 2), (9, 128, 20), (3, 512, 80)])
def test_convert_roundtrip(tmp_path: Path, packed: bool, n: int, s: int, p: int):
    a = random_arrays(n, s, p, vocab=30522, seed=n + s)
    src = tmp_path / "part-00.tfrecord"
    write_tfrecord(src, a, packed)
    ex = parse_example(read_records(str(src)).__next__())
    assert ex["extra_bytes"] == [b"ignored", b""] and ex["masked_lm_weights"].dtype == np.float32
    assert main([str(src), "--output_dir", str(tmp_path / "out"), "--vocab_size", "30522", "--quiet"]) == 0
    got = read_shard(tmp_path / "out" / "part-00.hdf5", vocab_size=30522)
    for name in SCHEMA:
        np.testing.assert_array_equal(got[name], a[name].astype(SCHEMA[name][0]), err_msg=name)


def test_gzip_compressed_file(tmp_path: Path):
    import gzip

    a = random_arrays(5, 16, 3, seed=7)
    plain = tmp_path / "p.tfrecord"
    write_tfrecord(plain, a, True)
    (tmp_path / "z.tfrecord").write_bytes(gzip.compress(plain.read_bytes()))
    assert main([str(tmp_path / "z.tfrecord"), "--output_dir", str(tmp_path / "o"), "--quiet"]) == 0
    np.testing.assert_array_equal(read_shard(tmp_path / "o" / "z.hdf5")["input_ids"], a["input_ids"])
    (tmp_path / "bad.tfrecord").write_bytes(gzip.compress(plain.read_bytes())[:-9])
    with pytest.raises(TFRecordError, match="bad.tfrecord: corrupt gzip"):
        main([str(tmp_path / "bad.tfrecord"), "--output_dir", str(tmp_path / "o"), "--quiet"])


def test_two_files_and_cli(tmp_path: Path, capsys):
    a, b = random_arrays(4, 16, 3, seed=1), random_arrays(5, 16, 3, seed=2)
    write_tfrecord(tmp_path / "a.tfrecord", a, True)
    write_tfrecord(tmp_path / "b.tfrecords", b, False)
    out = tmp_path / "out"
    assert cli_main(["convert-tfrecord", str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecords"),
                     "--output_dir", str(out), "--quiet"]) == 0
    assert "converted 9 instances from 2 files" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["a.hdf5", "b.hdf5"]
    np.testing.assert_array_equal(read_shard(out / "b.hdf5")["input_ids"], b["input_ids"])


def corrupt_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    a = random_arrays(6, 16, 3, seed=3)
    good = tmp_path / "good.tfrecord"
    write_tfrecord(good, a, True)
    blob = good.read_bytes()
    offsets, pos = [], 0  # where each record starts
    while pos < len(blob):
        offsets.append(pos)
        pos += 16 + struct.unpack("<Q", blob[pos:pos + 8])[0]
    cases = {}
    flipped = bytearray(blob)
    flipped[offsets[4] + 12 + 20] ^= 0x01  # a byte of record 4's data
    cases["data_crc"] = (tmp_path / "flip.tfrecord", "flip.tfrecord: record 4: data CRC mismatch")
    cases["data_crc"][0].write_bytes(bytes(flipped))
    flipped = bytearray(blob)
    flipped[offsets[2] + 1] ^= 0x40  # record 2's length
    cases["len_crc"] = (tmp_path / "len.tfrecord", "len.tfrecord: record 2: length CRC mismatch")
    cases["len_crc"][0].write_bytes(bytes(flipped))
    cases["truncated"] = (tmp_path / "trunc.tfrecord", "trunc.tfrecord: record 5: truncated")
    cases["truncated"][0].write_bytes(blob[:len(blob) - 7])
    cases["header"] = (tmp_path / "head.tfrecord", "head.tfrecord: record 6: truncated header")
    cases["header"][0].write_bytes(blob + blob[:5])
    write_tfrecord(tmp_path / "missing.tfrecord", a, True, drop_at=3)
    cases["missing"] = (tmp_path / "missing.tfrecord", "missing.tfrecord: record 3: feature 'masked_lm_ids' is missing")
    cases["empty"] = (tmp_path / "empty.tfrecord", "empty.tfrecord: no records")
    cases["empty"][0].write_bytes(b"")
    return cases


@pytest.mark.parametrize("case", ["data_crc", "len_crc", "truncated", "header", "missing", "empty"])
def test_corrupt_inputs_name_file_and_record(tmp_path: Path, case: str, capsys):
    path, message = corrupt_cases(tmp_path)[case]
    out = tmp_path / "out"
    with pytest.raises(TFRecordError, match=message.replace(".", r"\.")):
        main([str(path), "--output_dir", str(out), "--quiet"])
    assert not out.exists() or not any(out.iterdir())  # nothing written under a final name
    assert cli_main(["convert-tfrecord", str(path), "--output_dir", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_other_errors(tmp_path: Path):
    write_tfrecord(tmp_path / "a.tfrecord", random_arrays(2, 16, 3), True)
    write_tfrecord(tmp_path / "b.tfrecord", random_arrays(2, 32, 3), True)
    with pytest.raises(TFRecordError, match="b.tfrecord: sequence length 32"):
        main([str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord"), "--output_dir", str(tmp_path / "o"),
              "--quiet"])
    assert not (tmp_path / "o" / "b.hdf5").exists()
    with pytest.raises(TFRecordError, match="vocab size 10"):
        main([str(tmp_path / "a.tfrecord"), "--output_dir", str(tmp_path / "p"), "--vocab_size", "10", "--quiet"])
    with pytest.raises(TFRecordError, match="nope.tfrecord: input file not found"):
        main([str(tmp_path / "nope.tfrecord"), "--output_dir", str(tmp_path / "o")])
    (tmp_path / "junk.tfrecord").write_bytes(frame(b"\x0b\x00\x01"))  # valid framing, invalid protobuf
    with pytest.raises(TFRecordError, match="junk.tfrecord: record 0: not a valid tf.train.Example"):
        main([str(tmp_path / "junk.tfrecord"), "--output_dir", str(tmp_path / "o")])


def test_wrong_kind_and_width(tmp_path: Path):
    a, b = random_arrays(3, 16, 3, seed=1), random_arrays(2, 20, 3, seed=2)
    mixed = tmp_path / "mixed.tfrecord"  # records 0-2 have S=16, records 3-4 S=20
    mixed.write_bytes(b"".join(frame(google_example(x, i, True)) for x in (a, b) for i in range(len(x["input_ids"]))))
    with pytest.raises(TFRecordError, match="mixed.tfrecord: record 3: feature 'input_ids' has 20 values, expected 16"):
        main([str(mixed), "--output_dir", str(tmp_path / "o")])
    rec = google_example(a, 0, True)
    weights_as_ints = rec.replace(b"masked_lm_weights\x12", b"masked_lm_weightz\x12")  # rename the real one
    extra = field(1, 2, field(1, 2, b"masked_lm_weights") + field(2, 2, int64_feature([1, 1, 0], True)))
    kind = tmp_path / "kind.tfrecord"
    kind.write_bytes(frame(rec) + frame(weights_as_ints + field(1, 2, extra)))  # a 2nd Features message merges in
    with pytest.raises(TFRecordError, match="kind.tfrecord: record 1: feature 'masked_lm_weights' is not a float_list"):
        main([str(kind), "--output_dir", str(tmp_path / "o")])


def test_cross_check_with_tensorflow(tmp_path: Path):
    tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed: the cross-check with it is not run")
    a = random_arrays(3, 16, 3, seed=5)
    src = tmp_path / "x.tfrecord"
    write_tfrecord(src, a, True)
    ours = [parse_example(r) for r in read_records(str(src))]
    for rec, mine in zip(tf.data.TFRecordDataset(str(src)), ours):
        ex = tf.train.Example.FromString(rec.numpy())
        for name, feat in ex.features.feature.items():
            kind = feat.WhichOneof("kind")
            values = list(getattr(feat, kind).value)
            assert list(mine[name]) == pytest.approx(values) if kind != "bytes_list" else mine[name] == values
