"""BertConfig: the shape and regularisation of a BERT model, with named presets.

Field names are HuggingFace's, so a `config.json` maps one to one. Two JSON flavours are read
and written:

* ``hf``     HuggingFace `config.json` (``model_type: bert``; extra HF keys are ignored on read).
* ``google`` Google's `bert_config.json` (the 11 keys of google-research/bert `BertConfig`; it
             has no `layer_norm_eps` (TF BERT's LayerNorm uses 1e-12) and no `pad_token_id`).

`kernel_backend`, `unpad` and `sparse_last_layer` are bertperf's own settings (never written to
either JSON).
`kernel_backend` (default `auto`): which implementation runs the fusable points of the model (see
`bertperf.model.bert`): one of `auto | cpu | cuda | triton | torch` (`bertperf.ops.backend`).
`auto` takes the fused kernels of the tensors' device (C++ on CPU tensors, CUDA, else Triton, on
GPU tensors) and falls back to `torch` (eager composites) when they cannot load; the choice is
logged once. `torch` is the reference path.
`unpad`: the encoder runs its projections, FFN and fused points on the valid tokens only (pad
tokens are dropped after the embeddings and restored, as zeros, at the output; attention still
sees the padded [B, S] layout); it pays only when batches carry much padding.
`sparse_last_layer` (default on): in pre-training, the last layer computes its queries'
attention, output projection and FFN only at the positions the heads read ([CLS] and the masked
positions; keys and values at every token). The result is the same; at seq 128 with 20 masked
positions BERT-base does 5% fewer training FLOPs, tiny, mini and small 12-14%. The
pipeline-parallel model (`bertperf.model.pipeline`) still computes every row.
`attention_impl` picks the attention path: `sdpa` (torch's fused SDPA), `fused` (scores by
matmul, then the fused scale + mask + softmax + dropout op of `bertperf.ops.softmax` on
`kernel_backend`), or `auto` (the default: `fused` where the kernel backend resolves to the C++
CPU kernels, the fastest path on a CPU; `sdpa` everywhere else, where SDPA's flash kernels never
materialise the [S, S] scores). It runs on every device, so it is kept in the HF `config.json`
(transformers keeps unknown keys and ignores it; a config.json without it reads as `auto`);
Google's format has no place for it. The name is checked here; whether the backend can run on
the model's device is checked at the first forward.

Presets are the sizes of Google's BERT release (Turc et al. 2019 for the small ones), with
the uncased vocabulary (30522), 512 positions and 2 segment types:

    tiny  L2  H128  A2  I512      mini  L4  H256  A4  I1024     small L4  H512  A8  I2048
    base  L12 H768  A12 I3072     large L24 H1024 A16 I4096
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from bertperf.ops.backend import BACKENDS
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

# kernel backends the model can route its fusable points to (see bertperf.model.bert and
# bertperf.ops.backend; whether one can run is decided at run time, by the tensors' device)
MODEL_KERNEL_BACKENDS: tuple[str, ...] = BACKENDS

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
}

GOOGLE_KEYS = (
    "attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size",
    "initializer_range", "intermediate_size", "max_position_embeddings", "num_attention_heads",
    "num_hidden_layers", "type_vocab_size", "vocab_size",
)
# HF keys without which the model's shape would be a guess
HF_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# non-HF fields of BertConfig
_BERTPERF_ONLY = ("kernel_backend", "unpad", "sparse_last_layer")
# attention implementations (see bertperf.model.bert.attention)
ATTENTION_IMPLS: tuple[str, ...] = ("auto", "sdpa", "fused")
_GOOGLE_LN_EPS = 1e-12


@dataclass
class BertConfig:
    """Shape and regularisation of a BERT model (HF field names; defaults are BERT-Base's)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # erf GELU, the only activation implemented
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None  # fine-tuning heads; None -> hidden_dropout_prob
    kernel_backend: str = "auto"  # bertperf only: implementation of the fusable points
    attention_impl: str = "auto"  # bertperf only: "sdpa" (torch SDPA), "fused" (QK^T, fused softmax, PV) or "auto"
    unpad: bool = False  # bertperf only: skip pad tokens outside attention (see bertperf.model.bert)
    sparse_last_layer: bool = True  # bertperf only: the last layer's rows the heads never read are skipped

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self, source: str = "BertConfig") -> None:
        """Raise BertperfError naming the field if a value cannot build a model."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise BertperfError(f"{source}: field `{name}` must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise BertperfError(
                f"{source}: `hidden_size` ({self.hidden_size}) must be divisible by "
                f"`num_attention_heads` ({self.num_attention_heads})")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise BertperfError(f"{source}: field `{name}` must be a probability in [0, 1), got {v!r}")
        if self.classifier_dropout is not None and not (
                isinstance(self.classifier_dropout, (int, float)) and 0.0 <= self.classifier_dropout < 1.0):
            raise BertperfError(
                f"{source}: field `classifier_dropout` must be null or in [0, 1), got {self.classifier_dropout!r}")
        for name in ("initializer_range", "layer_norm_eps"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v <= 0:
                raise BertperfError(f"{source}: field `{name}` must be a positive number, got {v!r}")
        if self.hidden_act != "gelu":
            raise BertperfError(
                f"{source}: field `hidden_act` is {self.hidden_act!r}; bertperf implements BERT's erf "
                f"GELU only: set it to \"gelu\"")
        if not isinstance(self.pad_token_id, int) or not 0 <= self.pad_token_id < self.vocab_size:
            raise BertperfError(
                f"{source}: field `pad_token_id` must be an id below vocab_size ({self.vocab_size}), "
                f"got {self.pad_token_id!r}")
        if self.kernel_backend not in MODEL_KERNEL_BACKENDS:
            raise BertperfError(
                f"{source}: setting `kernel_backend` is {self.kernel_backend!r}; choose one of "
                f"{', '.join(repr(b) for b in MODEL_KERNEL_BACKENDS)} (\"auto\", the default, = the device's fused kernels; \"torch\" = eager torch)")
        for name in ("unpad", "sparse_last_layer"):
            if not isinstance(getattr(self, name), bool):
                raise BertperfError(f"{source}: setting `{name}` must be true or false, got {getattr(self, name)!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise BertperfError(
                f"{source}: setting `attention_impl` is {self.attention_impl!r}; choose one of "
                f"{', '.join(repr(a) for a in ATTENTION_IMPLS)} (\"auto\", the default, = fused with the C++ CPU kernels, else SDPA)")

    # ------------------------------------------------------------------ derived
    @property
    def head_size(self) -> int:
        """Width of one attention head (hidden_size / num_attention_heads)."""
        return self.hidden_size // self.num_attention_heads

    def replace(self, **overrides: Any) -> "BertConfig":
        """A copy with some fields changed (validated)."""
        _check_field_names(overrides, "overrides")
        return dataclasses.replace(self, **overrides)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "BertConfig":
        """The named preset (tiny, mini, small, base, large), with fields overridden."""
        if name not in PRESETS:
            raise BertperfError(f"unknown model preset {name!r}: choose one of {', '.join(PRESETS)}")
        _check_field_names(overrides, f"preset {name!r} overrides")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def resolve(cls, spec: "str | os.PathLike[str] | BertConfig", **overrides: Any) -> "BertConfig":
        """A config from a preset name, a JSON file (HF or Google flavour), or a directory holding
        `config.json` / `bert_config.json`."""
        if isinstance(spec, BertConfig):
            return spec.replace(**overrides) if overrides else spec
        s = os.fspath(spec)
        if s in PRESETS:
            return cls.preset(s, **overrides)
        if os.path.isdir(s):
            for fname in ("config.json", "bert_config.json"):
                if os.path.isfile(os.path.join(s, fname)):
                    return cls.from_json(os.path.join(s, fname), **overrides)
            raise BertperfError(f"{s}: directory has no config.json or bert_config.json")
        if os.path.isfile(s):
            return cls.from_json(s, **overrides)
        raise BertperfError(
            f"model config {s!r} is neither a preset ({', '.join(PRESETS)}) nor an existing JSON file")

    # ------------------------------------------------------------------ JSON
    @staticmethod
    def detect_flavor(d: dict[str, Any]) -> str:
        """'hf' or 'google' for a parsed config dict (HF configs carry model_type / architectures /
        layer_norm_eps; Google's have exactly its 11 keys, sometimes plus pooler_* extras)."""
        if any(k in d for k in ("model_type", "architectures", "layer_norm_eps", "transformers_version")):
            return "hf"
        return "google"

    @classmethod
    def from_dict(cls, d: dict[str, Any], flavor: str | None = None, source: str = "config",
                  **overrides: Any) -> "BertConfig":
        """Build from a parsed HF or Google dict (flavor detected when None)."""
        if not isinstance(d, dict):
            raise BertperfError(f"{source}: expected a JSON object, got {type(d).__name__}")
        flavor = flavor or cls.detect_flavor(d)
        fields = {f.name for f in dataclasses.fields(cls)} - set(_BERTPERF_ONLY)
        if flavor == "google":
            missing = [k for k in GOOGLE_KEYS if k not in d]
            if missing:
                raise BertperfError(
                    f"{source}: Google bert_config.json lacks {', '.join(missing)} (needs all of "
                    f"{', '.join(GOOGLE_KEYS)})")
            kw: dict[str, Any] = {k: d[k] for k in GOOGLE_KEYS}
            kw["layer_norm_eps"] = _GOOGLE_LN_EPS
        elif flavor == "hf":
            if d.get("model_type", "bert") != "bert":
                raise BertperfError(f"{source}: `model_type` is {d['model_type']!r}; only \"bert\" is supported")
            missing = [k for k in HF_REQUIRED if k not in d]
            if missing:
                raise BertperfError(f"{source}: config.json lacks {', '.join(missing)}")
            if d.get("position_embedding_type", "absolute") != "absolute":
                raise BertperfError(
                    f"{source}: `position_embedding_type` is {d['position_embedding_type']!r}; only "
                    f"\"absolute\" is supported")
            for flag in ("is_decoder", "add_cross_attention"):
                if d.get(flag):
                    raise BertperfError(f"{source}: `{flag}` is true; bertperf builds encoders only")
            kw = {k: v for k, v in d.items() if k in fields}
            if kw.get("pad_token_id") is None:
                kw.pop("pad_token_id", None)
        else:
            raise BertperfError(f"{source}: unknown config flavor {flavor!r} (use 'hf' or 'google')")
        _check_field_names(overrides, f"{source} overrides")
        kw.update(overrides)
        cfg = cls.__new__(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            setattr(cfg, f.name, kw.get(f.name, getattr(defaults, f.name)))
        cfg.validate(source)
        return cfg

    @classmethod
    def from_json(cls, path: "str | os.PathLike[str]", **overrides: Any) -> "BertConfig":
        """Read an HF `config.json` or a Google `bert_config.json` (flavour detected)."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise BertperfError(f"{path}: model config file not found") from None
        except json.JSONDecodeError as e:
            raise BertperfError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=path, **overrides)

    def to_hf_dict(self, architectures: list[str] | None = None) -> dict[str, Any]:
        """HuggingFace `config.json` content (model_type bert, absolute positions)."""
        d: dict[str, Any] = {}
        if architectures:
            d["architectures"] = list(architectures)
        d["model_type"] = "bert"
        for f in dataclasses.fields(self):
            if f.name not in _BERTPERF_ONLY:
                d[f.name] = getattr(self, f.name)
        d["position_embedding_type"] = "absolute"
        d["tie_word_embeddings"] = True
        return d

    def to_google_dict(self) -> dict[str, Any]:
        """Google `bert_config.json` content (its 11 keys)."""
        if abs(self.layer_norm_eps - _GOOGLE_LN_EPS) > 1e-15:
            raise BertperfError(
                f"layer_norm_eps is {self.layer_norm_eps}; Google's bert_config.json cannot express it "
                f"(TF BERT uses 1e-12): save the config in the 'hf' flavor")
        return {k: getattr(self, k) for k in GOOGLE_KEYS}

    def save_json(self, path: "str | os.PathLike[str]", flavor: str = "hf",
                  architectures: list[str] | None = None) -> None:
        """Write the config as JSON in `flavor` ('hf' or 'google'), atomically."""
        if flavor == "hf":
            d = self.to_hf_dict(architectures)
        elif flavor == "google":
            d = self.to_google_dict()
        else:
            raise BertperfError(f"unknown config flavor {flavor!r}: use 'hf' or 'google'")
        write_json_atomic(path, d)


def write_json_atomic(path: "str | os.PathLike[str]", obj: Any) -> None:
    """json.dump (indent 2) to `path` atomically."""
    from bertperf.utils.atomic import atomic_write_json

    atomic_write_json(path, obj, indent=2)


def _check_field_names(kw: dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(BertConfig)}
    bad = sorted(set(kw) - names)
    if bad:
        raise BertperfError(f"{where}: unknown BertConfig field(s) {', '.join(bad)}; "
                            f"valid fields: {', '.join(sorted(names))}")
