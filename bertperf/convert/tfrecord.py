"""Google-format TFRecord pre-training files -> bertperf HDF5 shards, without TensorFlow.

    bertperf convert-tfrecord IN.tfrecord... --output_dir OUT [--vocab_size V]

Each input file becomes one shard `OUT/<name>.hdf5` (`<name>`: the input's file name without a
`.tfrecord`/`.tfrecords`/`.tf_record` suffix), written atomically by `shards.write_shard`.

TFRecord framing, per record: uint64 little-endian length, uint32 masked CRC32C of those 8
bytes, the data, uint32 masked CRC32C of the data (mask(c) = ((c >> 15 | c << 17) + 0xa282ead8)
mod 2^32). Both CRCs are checked; any mismatch or truncation raises `TFRecordError` naming the file
and the record index. Gzip-compressed files (TFRecordOptions GZIP) are read too.

Each record is a serialized `tf.train.Example`, decoded by the minimal protobuf reader below:
Example{features=1: Features{feature=1: map<string, Feature>}}, Feature = oneof{bytes_list=1,
float_list=2, int64_list=3}, each a list message with `repeated value = 1` in packed or
unpacked encoding; unknown fields are skipped. The features Google's
`create_pretraining_data.py` writes are required: input_ids, input_mask, segment_ids [S];
masked_lm_positions, masked_lm_ids [P] (int64) and masked_lm_weights [P] (float);
next_sentence_labels [1]. Slots whose masked_lm_weight is 0 become position 0 / id 0 (our
padding). All records of all inputs must share S and P.

CRC32C: the table-driven Castagnoli CRC (reflected polynomial 0x82F63B78), in pure Python
(`crc32c`) and vectorized over many records with numpy (`crc32c_many`, the fast path).
Records are decoded in batches of 4096: the protobuf structure is walked per record in Python,
the packed int64/float lists of a batch are decoded together with numpy (record by record when
a writer used the unpacked encoding). Memory: one input file's bytes and arrays at a time.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import os
import struct
from typing import Iterator, Sequence

import numpy as np

from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def _make_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ POLY if c & 1 else c >> 1
        table[i] = c
    return table


CRC_TABLE = _make_table()
_TABLE_LIST = [int(x) for x in CRC_TABLE]


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of `data` (continuing from a previous `crc` of preceding bytes), pure Python."""
    c = crc ^ 0xFFFFFFFF
    t = _TABLE_LIST
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def crc32c_many(messages: Sequence[bytes]) -> np.ndarray:
    """CRC-32C of each message, vectorized across messages: uint32 [len(messages)].

    Uses two facts of this reflected CRC: the initial value 0xFFFFFFFF equals a zero initial
    value with the first 4 bytes XOR-ed with 0xFF, and with a zero register leading zero bytes
    do not change it; so the messages are left-padded with zeros to one length and processed
    column by column. Messages shorter than 4 bytes go through `crc32c`.
    """
    out = np.zeros(len(messages), dtype=np.uint32)
    long_idx = [i for i, m in enumerate(messages) if len(m) >= 4]
    for i, m in enumerate(messages):
        if len(m) < 4:
            out[i] = crc32c(m)
    if not long_idx:
        return out
    width = max(len(messages[i]) for i in long_idx)
    buf = np.zeros((len(long_idx), width), dtype=np.uint8)
    for row, i in enumerate(long_idx):
        m = messages[i]
        buf[row, width - len(m):] = np.frombuffer(m, dtype=np.uint8)
        buf[row, width - len(m):width - len(m) + 4] ^= 0xFF
    cols = np.ascontiguousarray(buf.T)  # [width, R]: one contiguous column per step
    crc = np.zeros(len(long_idx), dtype=np.uint32)
    for col in cols:
        crc = CRC_TABLE[(crc ^ col) & 0xFF] ^ (crc >> 8)
    out[long_idx] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def masked_crc(crc: int | np.ndarray) -> int | np.ndarray:
    """TFRecord's CRC mask: rotate right by 15 bits and add 0xa282ead8 (mod 2^32)."""
    if isinstance(crc, np.ndarray):
        c = crc.astype(np.uint64)
        return ((((c >> np.uint64(15)) | (c << np.uint64(17))) & np.uint64(0xFFFFFFFF))
                + np.uint64(0xA282EAD8)) & np.uint64(0xFFFFFFFF)
    crc &= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordError(BertperfError):
    """A TFRecord file is truncated, fails a CRC, or holds an Example we cannot use."""


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------

def read_records(path: str, check_crc: bool = True, batch: int = 4096) -> Iterator[bytes]:
    """The data of each record of a TFRecord file, in order, with both CRCs checked.

    Reads the whole file into memory (gzip-compressed files too); the data CRCs are checked
    `batch` records at a time with `crc32c_many`. Raises TFRecordError naming the file and the record index.
    """
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise TFRecordError(f"{path}: cannot read ({e.strerror or e})") from None
    if blob[:2] == b"\x1f\x8b":  # written with TFRecordOptions(compression_type="GZIP")
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError) as e:
            raise TFRecordError(f"{path}: corrupt gzip-compressed TFRecord file ({e})") from None
    pos, index = 0, 0
    pending: list[tuple[int, bytes, int]] = []  # (record index, data, stored masked crc)

    def flush() -> Iterator[bytes]:
        if check_crc:
            got = masked_crc(crc32c_many([d for _, d, _ in pending]))
            for (i, _, want), g in zip(pending, got):
                if int(g) != want:
                    raise TFRecordError(f"{path}: record {i}: data CRC mismatch (stored {want:#010x}, computed "
                                        f"{int(g):#010x}); the file is corrupt")
        for _, d, _ in pending:
            yield d
        pending.clear()

    while pos < len(blob):
        if len(blob) - pos < 12:
            raise TFRecordError(f"{path}: record {index}: truncated header ({len(blob) - pos} bytes left of 12); "
                                "the file is incomplete")
        header = blob[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", blob[pos + 8:pos + 12])
        if check_crc and masked_crc(crc32c(header)) != len_crc:
            raise TFRecordError(f"{path}: record {index}: length CRC mismatch at byte {pos}; the file is corrupt "
                                "or not a TFRecord file")
        start = pos + 12
        if len(blob) - start < length + 4:
            raise TFRecordError(f"{path}: record {index}: truncated (needs {length + 4} bytes after the header, "
                                f"{len(blob) - start} left); the file is incomplete")
        data = blob[start:start + length]
        (data_crc,) = struct.unpack("<I", blob[start + length:start + length + 4])
        pending.append((index, data, data_crc))
        if len(pending) >= batch:
            yield from flush()
        pos = start + length + 4
        index += 1
    yield from flush()


# ---------------------------------------------------------------------------------------------
# Minimal protobuf: tf.train.Example
# ---------------------------------------------------------------------------------------------

class ProtoError(ValueError):
    """Malformed protobuf bytes (wrapped into TFRecordError with the file and record)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a message; value is an int for wire types
    0/1/5 and the bytes for 2."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise ProtoError("truncated fixed64")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ProtoError(f"field {field}: length {n} runs past the end of the message")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            if pos + 4 > end:
                raise ProtoError("truncated fixed32")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ProtoError(f"field {field}: unsupported wire type {wire}")
        yield field, wire, value


def decode_packed_varints(buf: bytes) -> np.ndarray:
    """Packed varints -> int64 [n] (two's complement for negative int64), vectorized."""
    b = np.frombuffer(buf, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    ends = b < 0x80
    if not ends[-1]:
        raise ProtoError("truncated packed varint")
    group = np.concatenate([[0], np.cumsum(ends[:-1])])  # varint index of each byte
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    shift = (np.arange(b.size) - starts[group]).astype(np.uint64)
    if shift.max() >= 10:
        raise ProtoError("varint longer than 10 bytes")
    parts = (b & 0x7F).astype(np.uint64) << (np.uint64(7) * shift)
    return np.add.reduceat(parts, starts).view(np.int64)


def _int64_list(buf: bytes) -> np.ndarray:
    chunks: list[np.ndarray] = []
    for field, wire, value in _fields(buf):
        if field != 1:
            continue
        if wire == 2:
            chunks.append(decode_packed_varints(value))
        elif wire == 0:
            chunks.append(np.array([value], dtype=np.uint64).view(np.int64))
        else:
            raise ProtoError(f"Int64List value with wire type {wire}")
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def _float_list(buf: bytes) -> np.ndarray:
    chunks: list[np.ndarray] = []
    for field, wire, value in _fields(buf):
        if field != 1:
            continue
        if wire == 2:
            if len(value) % 4:
                raise ProtoError("packed FloatList length is not a multiple of 4")
            chunks.append(np.frombuffer(value, dtype="<f4"))
        elif wire == 5:
            chunks.append(np.array([value], dtype=np.uint32).view("<f4"))
        else:
            raise ProtoError(f"FloatList value with wire type {wire}")
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)


def _bytes_list(buf: bytes) -> list[bytes]:
    return [value for field, wire, value in _fields(buf) if field == 1 and wire == 2]


BYTES, FLOAT, INT64 = 1, 2, 3  # Feature oneof field numbers


def example_lists(buf: bytes) -> dict[str, tuple[int, bytes]]:
    """A serialized tf.train.Example -> {feature name: (kind, the serialized list message)}, kind
    BYTES / FLOAT / INT64 (0 with an empty message for an empty Feature). Nothing is decoded."""
    features: dict[str, tuple[int, bytes]] = {}
    for field, wire, value in _fields(buf):
        if field != 1 or wire != 2:
            continue  # Example.features
        for f2, w2, entry in _fields(value):
            if f2 != 1 or w2 != 2:
                continue  # Features.feature map entries
            key, feature = None, b""
            for f3, w3, v3 in _fields(entry):
                if f3 == 1 and w3 == 2:
                    key = v3.decode("utf-8")
                elif f3 == 2 and w3 == 2:
                    feature = v3
            if key is None:
                raise ProtoError("feature map entry without a key")
            kind, lst = 0, b""
            for f4, w4, v4 in _fields(feature):
                if w4 == 2 and f4 in (BYTES, FLOAT, INT64):
                    kind, lst = f4, v4
            features[key] = (kind, lst)
    return features


def decode_list(kind: int, lst: bytes) -> np.ndarray | list[bytes]:
    """Decode a list message of `example_lists`: int64 [n], float32 [n] or a list of bytes."""
    if kind == INT64:
        return _int64_list(lst)
    if kind == FLOAT:
        return _float_list(lst)
    if kind == BYTES:
        return _bytes_list(lst)
    return np.zeros(0, dtype=np.int64)


def parse_example(buf: bytes) -> dict[str, np.ndarray | list[bytes]]:
    """A serialized tf.train.Example -> {feature name: int64 array | float32 array | list of bytes}."""
    return {name: decode_list(kind, lst) for name, (kind, lst) in example_lists(buf).items()}


def packed_payload(lst: bytes) -> bytes | None:
    """The payload when a list message is one packed `value` field (what TensorFlow writes), else None."""
    if not lst:
        return b""
    if lst[0] != 0x0A:  # field 1, wire type 2
        return None
    n, pos = _varint(lst, 1)
    return lst[pos:] if pos + n == len(lst) else None


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------

INT_FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
                "next_sentence_labels")
FEATURES = INT_FEATURES + ("masked_lm_weights",)


class _Column:
    """One feature's values over a batch of records, decoded in one go when every record holds it
    as a single packed field (else record by record)."""

    def __init__(self, name: str, kind: int) -> None:
        self.name, self.kind = name, kind
        self.payloads: list[bytes] | None = []
        self.decoded: list[np.ndarray] = []

    def add(self, lst: bytes) -> None:
        payload = packed_payload(lst)
        if payload is not None and self.payloads is not None:
            self.payloads.append(payload)
            return
        if self.payloads is not None:  # switch to record-by-record decoding for the whole batch
            self.decoded = [self._decode_one(p) for p in self.payloads]
            self.payloads = None
        self.decoded.append(np.asarray(decode_list(self.kind, lst)))

    def _decode_one(self, payload: bytes) -> np.ndarray:
        if self.kind == INT64:
            return decode_packed_varints(payload)
        if len(payload) % 4:
            raise ProtoError(f"feature '{self.name}': packed FloatList length is not a multiple of 4")
        return np.frombuffer(payload, dtype="<f4")

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """(all values concatenated, the count of each record)."""
        if self.payloads is None:
            counts = np.array([len(v) for v in self.decoded], dtype=np.int64)
            flat = np.concatenate(self.decoded) if self.decoded else np.zeros(0)
            return flat, counts
        sizes = np.array([len(p) for p in self.payloads], dtype=np.int64)
        blob = b"".join(self.payloads)
        if self.kind == FLOAT:
            if (sizes % 4).any():
                raise ProtoError(f"feature '{self.name}': packed FloatList length is not a multiple of 4")
            return np.frombuffer(blob, dtype="<f4"), sizes // 4
        ends = np.frombuffer(blob, dtype=np.uint8) < 0x80
        stops = np.cumsum(sizes)
        nonempty = sizes > 0
        if nonempty.any() and not ends[stops[nonempty] - 1].all():
            raise ProtoError(f"feature '{self.name}': truncated packed varint")
        cum = np.concatenate([[0], np.cumsum(ends)])
        counts = cum[stops] - cum[stops - sizes]
        return decode_packed_varints(blob), counts


def _batch_to_arrays(path: str, first_index: int, records: list[bytes],
                     shapes: dict[str, int] | None) -> dict[str, np.ndarray]:
    """Decode a batch of Google pre-training Examples into [R, width] arrays, checking each
    feature's kind and width (`shapes`: name -> width, from the first record when None)."""
    columns = {name: _Column(name, FLOAT if name == "masked_lm_weights" else INT64) for name in FEATURES}
    for k, data in enumerate(records):
        index = first_index + k
        try:
            lists = example_lists(data)
        except (ProtoError, UnicodeDecodeError) as e:
            raise TFRecordError(f"{path}: record {index}: not a valid tf.train.Example ({e})") from None
        for name, col in columns.items():
            if name not in lists:
                raise TFRecordError(f"{path}: record {index}: feature '{name}' is missing (Google pre-training "
                                    f"records have {', '.join(FEATURES)}); was it written by "
                                    "create_pretraining_data.py?")
            kind, lst = lists[name]
            if kind not in (col.kind, 0):
                want = "float_list" if col.kind == FLOAT else "int64_list"
                raise TFRecordError(f"{path}: record {index}: feature '{name}' is not a {want}")
            try:
                col.add(lst)
            except ProtoError as e:
                raise TFRecordError(f"{path}: record {index}: not a valid tf.train.Example ({e})") from None
    out: dict[str, np.ndarray] = {}
    for name, col in columns.items():
        try:
            flat, counts = col.values()
        except ProtoError as e:
            raise TFRecordError(f"{path}: records {first_index}..{first_index + len(records) - 1}: not valid "
                                f"tf.train.Examples ({e})") from None
        want = shapes[name] if shapes else (1 if name == "next_sentence_labels" else int(counts[0]))
        bad = np.flatnonzero(counts != want)
        if bad.size:
            raise TFRecordError(f"{path}: record {first_index + int(bad[0])}: feature '{name}' has "
                                f"{int(counts[bad[0]])} values, expected {want} (one max_seq_length / "
                                "max_predictions_per_seq per input)")
        out[name] = flat.reshape(len(records), want)
    s, p = out["input_ids"].shape[1], out["masked_lm_positions"].shape[1]
    for name, width in (("input_mask", s), ("segment_ids", s), ("masked_lm_ids", p), ("masked_lm_weights", p)):
        if out[name].shape[1] != width:
            raise TFRecordError(f"{path}: record {first_index}: feature '{name}' has {out[name].shape[1]} values, "
                                f"expected {width} like '{'input_ids' if width == s else 'masked_lm_positions'}'")
    return out


def examples_to_arrays(path: str, records: Iterator[bytes], batch: int = 4096) -> dict[str, np.ndarray]:
    """Decode Google pre-training Examples into our shard arrays (int64, cast by write_shard).
    Slots whose masked_lm_weight is 0 become position 0 / id 0."""
    parts: list[dict[str, np.ndarray]] = []
    shapes: dict[str, int] | None = None
    pending: list[bytes] = []
    index = 0

    def flush() -> None:
        nonlocal shapes, index
        part = _batch_to_arrays(path, index, pending, shapes)
        shapes = shapes or {name: a.shape[1] for name, a in part.items()}
        real = part.pop("masked_lm_weights") != 0
        part["masked_lm_positions"] = np.where(real, part["masked_lm_positions"], 0)
        part["masked_lm_ids"] = np.where(real, part["masked_lm_ids"], 0)
        part["next_sentence_labels"] = part["next_sentence_labels"][:, 0]
        parts.append(part)
        index += len(pending)
        pending.clear()

    for data in records:
        pending.append(data)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    if not parts:
        raise TFRecordError(f"{path}: no records; nothing to convert")
    return {name: np.concatenate([p[name] for p in parts]) for name in INT_FEATURES}


def output_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".tfrecords", ".tfrecord", ".tf_record", ".tfr"):
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[:-len(suffix)] + ".hdf5"
    return base + ".hdf5"


def convert_file(path: str, out_path: str, vocab_size: int | None = None,
                 shapes: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """Convert one TFRecord file to one shard; returns (N, S, P). With `shapes` = (S, P), a file
    of other shapes raises TFRecordError before anything is written."""
    from bertperf.data.shards import ShardError, validate, write_shard

    arrays = examples_to_arrays(path, read_records(path))
    s, p = arrays["input_ids"].shape[1], arrays["masked_lm_positions"].shape[1]
    if shapes is not None and shapes != (s, p):
        raise TFRecordError(f"{path}: sequence length {s} / max predictions {p} differ from the earlier inputs' "
                            f"{shapes[0]} / {shapes[1]}; convert each phase into its own --output_dir")
    try:
        validate(arrays, where=path, vocab_size=vocab_size)
    except ShardError as e:
        raise TFRecordError(f"{e} (converting to {out_path})") from None
    write_shard(out_path, arrays)
    n, s = arrays["input_ids"].shape
    return n, s, arrays["masked_lm_positions"].shape[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertperf convert-tfrecord",
                                description="Convert Google-format TFRecord pre-training files (from "
                                            "create_pretraining_data.py) to bertperf HDF5 shards, without TensorFlow.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="TFRecord files (one output shard each)")
    p.add_argument("--output_dir", required=True, metavar="DIR", help="where the .hdf5 shards are written")
    p.add_argument("--vocab_size", type=int, default=None, metavar="V",
                   help="also check that every token id is below V (e.g. 30522)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    names: dict[str, str] = {}
    for path in args.inputs:
        if not os.path.isfile(path):
            raise TFRecordError(f"{path}: input file not found")
        name = output_name(path)
        if name in names:
            raise TFRecordError(f"{path} and {names[name]} would both be written to {name}; rename one of them")
        names[name] = path
    shapes: tuple[int, int] | None = None
    total = 0
    for name, path in tqdm(names.items(), desc="convert", unit="file", disable=args.quiet):
        out = os.path.join(args.output_dir, name)
        n, s, p = convert_file(path, out, args.vocab_size, shapes)
        shapes = (s, p)
        total += n
        log.info("%s -> %s: %d instances", path, out, n)
    print(f"converted {total} instances from {len(names)} files into {args.output_dir} "
          f"(S={shapes[0]}, P={shapes[1]})")
    return 0


if __name__ == "__main__":
    import sys

    from bertperf.utils.errors import run_cli

    sys.exit(run_cli(lambda: main(), prog="bertperf convert-tfrecord"))
