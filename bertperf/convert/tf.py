"""Google TensorFlow BERT checkpoints -> bertperf, without TensorFlow.

A Google checkpoint is `bert_model.ckpt.index` + `bert_model.ckpt.data-00000-of-00001` (the
"V2" tensor bundle), next to `bert_config.json` and `vocab.txt`. This module reads the bundle in
pure Python:

- `.index` is a LevelDB-format table (SSTable): data blocks of prefix-compressed entries
  (varint shared / non-shared key lengths, varint value length) with restart points, an index
  block pointing at them, and a 48-byte footer (metaindex and index block handles as varints,
  padding, magic 0xdb4775248b80fb57). Each block is followed by a 1-byte compression type
  (0 = none; TensorFlow writes bundles uncompressed) and a masked crc32c, both checked.
- the value of key "" is a BundleHeaderProto (number of data shards, endianness); every other
  key is a variable name whose value is a BundleEntryProto (dtype, shape, shard_id, offset, size,
  masked crc32c of the bytes). The protobufs are decoded by hand (a few varint fields).
- `.data-SSSSS-of-NNNNN` holds the raw little-endian tensor bytes at (offset, size).

Supported dtypes: float32/64, float16, bfloat16 (widened to float32), int8/16/32/64, uint8, bool.
String tensors and partitioned (sliced) variables are refused with an error naming the variable.
The crc32c of every tensor is checked (numpy-vectorised, `crc32c`; `verify=False` skips it).

Names (TF on the left, HF on the right; kernels are [in, out] in TF and transposed):

    bert/embeddings/{word,position,token_type}_embeddings -> bert.embeddings.*_embeddings.weight
    bert/embeddings/LayerNorm/{gamma,beta}                -> bert.embeddings.LayerNorm.{weight,bias}
    bert/encoder/layer_N/<path>/{kernel,bias}             -> bert.encoder.layer.N.<path>.{weight,bias}
    bert/encoder/layer_N/<path>/LayerNorm/{gamma,beta}    -> ....LayerNorm.{weight,bias}
    bert/pooler/dense/{kernel,bias}                       -> bert.pooler.dense.{weight,bias}
    cls/predictions/transform/...                         -> cls.predictions.transform....
    cls/predictions/output_bias                           -> cls.predictions.bias
    cls/seq_relationship/output_{weights,bias}            -> cls.seq_relationship.{weight,bias}
    output_{weights,bias}        (run_classifier.py)      -> classifier.{weight,bias}
    cls/squad/output_{weights,bias} (run_squad.py)        -> qa_outputs.{weight,bias}

Ignored: optimizer slots (`.../adam_m`, `.../adam_v`, `.../Adam`, `.../Adam_1`,
`.../Momentum`, ...), `global_step`, loss-scale and other bookkeeping variables. Anything else is
an error listing the names. The HF names then go through `bertperf.convert.hf` (q/k/v fused,
head groups loaded or freshly initialised as for an HF directory).

Only reading is offered; writing TF checkpoints is not (export through `save_pretrained` and
transformers' own TF tools if a TF checkpoint is needed).
"""
from __future__ import annotations

import glob
import logging
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
VECTOR_CRC_MIN_BYTES = 1 << 20  # crc32c: byte loop below, numpy lanes above
CONFIG_NAMES = ("bert_config.json", "config.json")

# TensorFlow DataType enum -> numpy dtype ("bfloat16" handled apart)
_DTYPES: dict[int, Any] = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
                           9: np.int64, 10: np.bool_, 14: "bfloat16", 19: np.float16}
_DTYPE_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}


# --------------------------------------------------------------------------------------------
# crc32c (Castagnoli), as LevelDB and TensorFlow mask it
# --------------------------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def _crc32c_scalar(data: bytes, reg: int) -> int:
    """The raw CRC-32C register after `data`, starting from `reg` (no final xor)."""
    table = _CRC_TABLE
    for b in data:
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-32C of `data` (continuing `crc`). Known value: crc32c(b"123456789") == 0xE3069283.

    Below VECTOR_CRC_MIN_BYTES (1 MB) a byte loop; beyond, the data is cut into 2^k lanes whose registers numpy
    advances together, and the lanes are combined with the register's linear "advance over n
    zero bytes" map (GF(2) matrices), so a 100 MB tensor takes well under a second."""
    data = bytes(data)
    reg = crc ^ 0xFFFFFFFF
    if len(data) < VECTOR_CRC_MIN_BYTES:
        return _crc32c_scalar(data, reg) ^ 0xFFFFFFFF
    lanes = 1 << max(0, (len(data) // 1024).bit_length() - 1)
    length = len(data) // lanes
    main = np.frombuffer(data, dtype=np.uint8, count=lanes * length).reshape(lanes, length).T.copy()
    table = np.asarray(_CRC_TABLE, dtype=np.uint32)
    regs = np.zeros(lanes, dtype=np.uint32)
    for row in main:  # [lanes] bytes at one offset of every lane
        regs = table[(regs ^ row) & 0xFF] ^ (regs >> 8)
    span = length
    while len(regs) > 1:  # fold neighbours: reg(A || B) = advance(reg(A), len B) ^ reg_from_zero(B)
        regs = _apply(_advance(span), regs[0::2]) ^ regs[1::2]
        span *= 2
    reg = int(_apply(_advance(lanes * length), np.asarray([reg], dtype=np.uint32))[0]) ^ int(regs[0])
    return _crc32c_scalar(data[lanes * length:], reg) ^ 0xFFFFFFFF


def _map_vec(cols: list[int], v: int) -> int:
    out = 0
    k = 0
    while v:
        if v & 1:
            out ^= cols[k]
        v >>= 1
        k += 1
    return out


_ADVANCE: dict[int, list[int]] = {}


def _advance(nbytes: int) -> list[int]:
    """Columns (images of the 32 unit vectors) of the linear map that advances a raw CRC-32C
    register over `nbytes` zero bytes."""
    if nbytes in _ADVANCE:
        return _ADVANCE[nbytes]
    one = [_CRC_TABLE[(1 << k) & 0xFF] ^ ((1 << k) >> 8) for k in range(32)]  # one zero byte
    result = [1 << k for k in range(32)]  # identity
    power, n = one, nbytes
    while n:
        if n & 1:
            result = [_map_vec(power, c) for c in result]
        power = [_map_vec(power, c) for c in power]
        n >>= 1
    _ADVANCE[nbytes] = result
    return result


def _apply(cols: list[int], regs: np.ndarray) -> np.ndarray:
    """The map `cols` applied to every uint32 of `regs`, through four 256-entry byte tables."""
    out = np.zeros_like(regs)
    for k in range(4):
        t = np.asarray([_map_vec(cols, b << (8 * k)) for b in range(256)], dtype=np.uint32)
        out ^= t[(regs >> np.uint32(8 * k)) & np.uint32(0xFF)]
    return out


def mask_crc(crc: int) -> int:
    """LevelDB's masking: rotate right by 15 bits and add 0xa282ead8 (mod 2^32)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Varints and the few protobuf fields we need
# --------------------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at `pos`."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: varints as int, length-delimited
    as bytes, fixed32/fixed64 as int."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, val


@dataclass
class BundleEntry:
    """One variable of the bundle (BundleEntryProto)."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked
    sliced: bool


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for num, _, val in _proto_fields(buf):
        if num == 2:  # repeated Dim {int64 size = 1; string name = 2}
            size = 0
            for dnum, _, dval in _proto_fields(val):
                if dnum == 1:
                    size = dval - (1 << 64) if dval >= 1 << 63 else dval
            dims.append(size)
        elif num == 3 and val:
            raise ValueError("unknown rank")
    return tuple(dims)


def _parse_entry(buf: bytes) -> BundleEntry:
    e = BundleEntry(dtype=0, shape=(), shard_id=0, offset=0, size=0, crc32c=0, sliced=False)
    for num, _, val in _proto_fields(buf):
        if num == 1:
            e.dtype = val
        elif num == 2:
            e.shape = _parse_shape(val)
        elif num == 3:
            e.shard_id = val
        elif num == 4:
            e.offset = val
        elif num == 5:
            e.size = val
        elif num == 6:
            e.crc32c = val
        elif num == 7:
            e.sliced = True
    return e


def _parse_header(buf: bytes) -> tuple[int, int]:
    """(num_shards, endianness: 0 little, 1 big) of a BundleHeaderProto."""
    num_shards, endian = 1, 0
    for num, _, val in _proto_fields(buf):
        if num == 1:
            num_shards = val
        elif num == 2:
            endian = val
    return num_shards, endian


# --------------------------------------------------------------------------------------------
# The SSTable (.index)
# --------------------------------------------------------------------------------------------


def _block(data: bytes, offset: int, size: int, path: str) -> bytes:
    """The contents of the block at (offset, size), its trailer checked."""
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(data):
        raise BertperfError(f"{path}: block at {offset} runs past the end of the file; the index is truncated")
    contents = data[offset:end]
    ctype = data[end]
    stored = struct.unpack_from("<I", data, end + 1)[0]
    if mask_crc(crc32c(data[offset:end + 1])) != stored:
        raise BertperfError(f"{path}: block at {offset} fails its crc32c check; the index file is corrupt")
    if ctype != 0:
        raise BertperfError(f"{path}: block at {offset} is compressed (type {ctype}); only uncompressed "
                            "tables (what TensorFlow writes for checkpoints) are supported")
    return contents


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs of one block, keys rebuilt from their shared prefixes."""
    if len(block) < 4:
        raise ValueError("block shorter than its restart count")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise ValueError("bad restart count")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + vlen > limit:
            raise ValueError("bad entry lengths")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + vlen]
        pos += vlen


def read_table(path: str) -> dict[bytes, bytes]:
    """Every (key, value) of the LevelDB-format table at `path` (the checkpoint .index file)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < FOOTER_SIZE:
        raise BertperfError(f"{path}: {len(data)} bytes, shorter than a table footer; not a TF checkpoint index")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)[0] != TABLE_MAGIC:
        raise BertperfError(f"{path}: bad table magic; not a TensorFlow V2 checkpoint index (.index)")
    try:
        _, pos = _varint(footer, 0)  # metaindex offset
        _, pos = _varint(footer, pos)  # metaindex size
        idx_off, pos = _varint(footer, pos)
        idx_size, _ = _varint(footer, pos)
        out: dict[bytes, bytes] = {}
        for _, handle in _block_entries(_block(data, idx_off, idx_size, path)):
            off, p = _varint(handle, 0)
            size, _ = _varint(handle, p)
            for k, v in _block_entries(_block(data, off, size, path)):
                out[k] = v
    except ValueError as e:
        raise BertperfError(f"{path}: corrupt table ({e}); not a readable TF checkpoint index") from None
    return out


# --------------------------------------------------------------------------------------------
# The bundle
# --------------------------------------------------------------------------------------------


def read_tf_checkpoint(prefix: str, verify: bool = True,
                       names: "set[str] | None" = None) -> dict[str, np.ndarray]:
    """Variables of the checkpoint `prefix` (`<prefix>.index` + `<prefix>.data-*`) as numpy
    arrays of their shapes (bfloat16 widened to float32). `names`: read only these (others are
    skipped without touching the data file). `verify`: check each tensor's crc32c."""
    index = prefix + ".index"
    if not os.path.isfile(index):
        raise BertperfError(f"{index}: not found; give the checkpoint prefix (e.g. .../bert_model.ckpt) "
                            "or the directory holding it")
    table = read_table(index)
    num_shards, endian = _parse_header(table.get(b"", b""))
    if endian != 0:
        raise BertperfError(f"{index}: big-endian checkpoint; only little-endian bundles are supported")
    out: dict[str, np.ndarray] = {}
    files: dict[int, Any] = {}
    try:
        for key, value in sorted(table.items()):
            if key == b"":
                continue
            name = key.decode("utf-8")
            if names is not None and name not in names:
                continue
            out[name] = _read_tensor(prefix, name, _parse_entry(value), num_shards, files, verify)
    finally:
        for f in files.values():
            f.close()
    return out


def list_tf_variables(prefix: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype name) of every variable, from the .index alone."""
    table = read_table(prefix + ".index")
    out = {}
    for key, value in table.items():
        if key:
            e = _parse_entry(value)
            dt = _DTYPES.get(e.dtype, _DTYPE_NAMES.get(e.dtype, f"dtype{e.dtype}"))
            out[key.decode("utf-8")] = (e.shape, dt if isinstance(dt, str) else np.dtype(dt).name)
    return out


def _read_tensor(prefix: str, name: str, e: BundleEntry, num_shards: int, files: dict, verify: bool) -> np.ndarray:
    if e.sliced:
        raise BertperfError(f"{prefix}: variable {name!r} is partitioned into slices; partitioned checkpoints "
                            "are not supported (re-save it unpartitioned)")
    dt = _DTYPES.get(e.dtype)
    if dt is None:
        raise BertperfError(f"{prefix}: variable {name!r} has dtype "
                            f"{_DTYPE_NAMES.get(e.dtype, e.dtype)}, which bertperf does not read")
    path = f"{prefix}.data-{e.shard_id:05d}-of-{num_shards:05d}"
    if e.shard_id not in files:
        if not os.path.isfile(path):
            raise BertperfError(f"{path}: data shard not found (needed for {name!r}); copy every "
                                f"{os.path.basename(prefix)}.data-* file next to the .index")
        files[e.shard_id] = open(path, "rb")
    f = files[e.shard_id]
    f.seek(e.offset)
    raw = f.read(e.size)
    if len(raw) != e.size:
        raise BertperfError(f"{path}: truncated: {name!r} needs bytes {e.offset}..{e.offset + e.size}")
    if verify and mask_crc(crc32c(raw)) != e.crc32c:
        raise BertperfError(f"{path}: variable {name!r} fails its crc32c check; the data file is corrupt")
    count = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
    if dt == "bfloat16":
        arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.frombuffer(raw, dtype=np.dtype(dt).newbyteorder("<"))
    if arr.size != count:
        raise BertperfError(f"{path}: variable {name!r} has {arr.size} values for shape {e.shape}")
    return arr.reshape(e.shape).astype(arr.dtype.newbyteorder("="), copy=True)


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

_SLOT_RE = re.compile(r"/(adam_m|adam_v|Adam|Adam_1|Momentum|Adagrad|RMSProp|RMSProp_1|LAMB|LAMB_1|"
                      r"ExponentialMovingAverage)$")
_BOOKKEEPING = re.compile(r"^(global_step|current_loss_scale|good_steps|loss_scale.*|beta[12]_power(_\d+)?|"
                          r"_CHECKPOINTABLE_OBJECT_GRAPH)$")
_LEAF = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}


def tf_to_hf_name(name: str) -> tuple[str, bool] | None:
    """(HF name, transpose?) for a TF BERT variable, None for ignored ones (optimizer slots,
    bookkeeping). Unknown layouts raise KeyError."""
    if _SLOT_RE.search(name) or _BOOKKEEPING.match(name):
        return None
    special = {
        "cls/predictions/output_bias": "cls.predictions.bias",
        "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
        "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
        "output_weights": "classifier.weight",
        "output_bias": "classifier.bias",
        "cls/squad/output_weights": "qa_outputs.weight",
        "cls/squad/output_bias": "qa_outputs.bias",
    }
    if name in special:
        return special[name], False
    parts = name.split("/")
    if parts[0] == "bert" and len(parts) == 3 and parts[1] == "embeddings" and parts[2].endswith("_embeddings"):
        return f"bert.embeddings.{parts[2]}.weight", False
    if parts[0] in ("bert", "cls") and parts[-1] in _LEAF:
        mid = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in parts[:-1]]
        return ".".join(mid + [_LEAF[parts[-1]]]), parts[-1] == "kernel"
    raise KeyError(name)


def tf_to_hf_state(variables: dict[str, np.ndarray], source: str = "checkpoint") -> dict[str, "Any"]:
    """HF-named torch tensors (kernels transposed) from TF variables; ignored names are logged,
    names of no known BERT layout are an error."""
    import torch

    out, ignored, unknown = {}, [], []
    for name, arr in variables.items():
        try:
            mapped = tf_to_hf_name(name)
        except KeyError:
            unknown.append(name)
            continue
        if mapped is None:
            ignored.append(name)
            continue
        hf, transpose = mapped
        out[hf] = torch.from_numpy(np.ascontiguousarray(arr.T if transpose else arr))
    if unknown:
        raise BertperfError(f"{source}: variables of no known BERT layout: {', '.join(sorted(unknown))}")
    if ignored:
        log.info("%s: ignored %d optimizer/bookkeeping variables (e.g. %s)", source, len(ignored), ignored[0])
    return out


# --------------------------------------------------------------------------------------------
# Finding and loading
# --------------------------------------------------------------------------------------------


@dataclass
class TFCheckpoint:
    prefix: str  # <dir>/bert_model.ckpt
    config: str  # bert_config.json
    vocab: str | None  # vocab.txt next to it, if present


def find_tf_checkpoint(path: str) -> TFCheckpoint | None:
    """The TF checkpoint at `path` (a directory holding one `*.index`, preferring bert_model.ckpt
    and the TF `checkpoint` file's choice, or a prefix `.../bert_model.ckpt`), None if `path` is
    not one. A TF checkpoint without a config next to it is an error."""
    path = os.fspath(path)
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if os.path.isdir(path):
        prefixes = sorted(p[: -len(".index")] for p in glob.glob(os.path.join(path, "*.index")))
        if not prefixes:
            return None
        prefix = _pick_prefix(path, prefixes)
    elif os.path.isfile(path + ".index"):
        prefix = path
    else:
        return None
    d = os.path.dirname(os.path.abspath(prefix))
    config = next((os.path.join(d, c) for c in CONFIG_NAMES if os.path.isfile(os.path.join(d, c))), None)
    if config is None:
        raise BertperfError(f"{d}: TF checkpoint {os.path.basename(prefix)} has no bert_config.json next to it; "
                            "copy the bert_config.json that came with the checkpoint there")
    vocab = os.path.join(d, "vocab.txt")
    return TFCheckpoint(prefix=prefix, config=config, vocab=vocab if os.path.isfile(vocab) else None)


def _pick_prefix(d: str, prefixes: list[str]) -> str:
    if len(prefixes) == 1:
        return prefixes[0]
    ckpt_file = os.path.join(d, "checkpoint")  # TF's text proto: model_checkpoint_path: "model.ckpt-1000"
    if os.path.isfile(ckpt_file):
        with open(ckpt_file, encoding="utf-8") as f:
            m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', f.read(), re.M)
        if m:
            p = m.group(1) if os.path.isabs(m.group(1)) else os.path.join(d, m.group(1))
            if p in prefixes:
                return p
    named = os.path.join(d, "bert_model.ckpt")
    if named in prefixes:
        return named
    raise BertperfError(f"{d}: several TF checkpoints ({', '.join(os.path.basename(p) for p in prefixes)}) "
                        "and no `checkpoint` file naming one: pass the prefix, e.g. {d}/model.ckpt-1000")


def load_tf_pretrained(cls: type, path: str, num_labels: int | None = None, verify: bool = True,
                       **overrides: Any) -> Any:
    """Build the bertperf model class `cls` from a Google TF checkpoint (directory or prefix).

    The config is the bert_config.json next to it; overrides are BertConfig fields. Heads work
    as in `bertperf.convert.hf.load_pretrained` (`model.loading_info` lists initialised/dropped
    head groups)."""
    from bertperf.convert.hf import load_split_into, split_hf_state
    from bertperf.model.config import BertConfig
    from bertperf.model.heads import BertForSequenceClassification, BertForTokenClassification

    ck = find_tf_checkpoint(path)
    if ck is None:
        raise BertperfError(f"{path}: no TF checkpoint (.index + .data-*) here")
    config = BertConfig.from_json(ck.config, **overrides)
    split = split_hf_state(tf_to_hf_state(read_tf_checkpoint(ck.prefix, verify=verify,
                                                             names=_wanted(ck.prefix)), ck.prefix))
    if split.unknown:
        raise BertperfError(f"{ck.prefix}: variables that fit no BERT parameter: {', '.join(sorted(split.unknown))}")
    if issubclass(cls, (BertForSequenceClassification, BertForTokenClassification)):
        ckpt_rows = split.heads.get("classifier", {}).get("classifier.weight")
        if num_labels is None:
            if ckpt_rows is None:
                raise BertperfError(f"{ck.prefix}: the checkpoint has no classifier: pass num_labels=")
            num_labels = int(ckpt_rows.shape[0])
        elif ckpt_rows is not None and int(ckpt_rows.shape[0]) != num_labels:
            log.warning("%s: classifier has %d labels, %d wanted: it is re-initialised", ck.prefix,
                        ckpt_rows.shape[0], num_labels)
            split.heads.pop("classifier")
        model = cls(config, num_labels=num_labels)
    else:
        model = cls(config)
    load_split_into(model, split, source=ck.prefix)
    return model


def _wanted(prefix: str) -> set[str]:
    """Variable names worth reading (not optimizer slots / bookkeeping): skips their bytes."""
    names = set()
    for name in list_tf_variables(prefix):
        try:
            if tf_to_hf_name(name) is None:
                continue
        except KeyError:
            pass  # kept, so tf_to_hf_state reports it
        names.add(name)
    return names
