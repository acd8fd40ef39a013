"""HuggingFace <-> bertperf: parameter names, checkpoint loading and saving.

A HuggingFace BERT directory holds `config.json` and the weights as `model.safetensors`
(preferred), `model.safetensors.index.json` + shards, or `pytorch_model.bin` (read with
`torch.load(weights_only=True)`). Names (HF on the left, bertperf on the right; `bert.` prefix
on HF's head models, none on a bare `BertModel`):

    embeddings.word_embeddings / position_embeddings / token_type_embeddings
                                             -> embeddings.word / position / token_type
    embeddings.LayerNorm                     -> embeddings.norm
    encoder.layer.N.attention.self.{query,key,value}  -> layers.N.qkv   (concatenated q | k | v)
    encoder.layer.N.attention.output.dense   -> layers.N.attn_out
    encoder.layer.N.attention.output.LayerNorm -> layers.N.attn_norm
    encoder.layer.N.intermediate.dense       -> layers.N.ffn_in
    encoder.layer.N.output.dense             -> layers.N.ffn_out
    encoder.layer.N.output.LayerNorm         -> layers.N.ffn_norm
    pooler.dense                             -> pooler
    cls.predictions.transform.dense          -> mlm.transform
    cls.predictions.transform.LayerNorm      -> mlm.norm
    cls.predictions.bias                     -> mlm.bias   (decoder.bias is the same tensor)
    cls.predictions.decoder.weight           -> tied to the word embeddings: not saved; on load
                                                checked against them (a mismatch is an error)
    cls.seq_relationship                     -> nsp
    classifier / qa_outputs                  -> classifier / qa_outputs

Old TF-converted checkpoints name LayerNorm parameters gamma / beta: read as weight / bias.
`*.position_ids` buffers are ignored.

Loading into a model class: embeddings and encoder must be complete; each head group (pooler,
MLM, NSP, classifier, qa_outputs) the class has is loaded if the checkpoint has it, freshly
initialised if the checkpoint has none of it (fine-tuning from a pre-trained model), an error
if only part of it is there. Head groups the class does not have are dropped (logged). Any
other key, a missing encoder key or a shape mismatch is a BertperfError that lists them.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor

from bertperf.model.config import BertConfig, write_json_atomic
from bertperf.utils.errors import BertperfError

if TYPE_CHECKING:
    from bertperf.model.bert import BertPreTrainedModel

log = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
CONFIG = "config.json"

# --------------------------------------------------------------------------------------------
# Name tables (without the `bert.` prefix; layer-level names without `encoder.layer.N.`)
# --------------------------------------------------------------------------------------------

_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "embeddings.word.weight",
    "embeddings.position_embeddings.weight": "embeddings.position.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
    "embeddings.LayerNorm.weight": "embeddings.norm.weight",
    "embeddings.LayerNorm.bias": "embeddings.norm.bias",
}
_LAYER = {  # HF name inside encoder.layer.N -> bertperf name inside layers.N
    "attention.output.dense.weight": "attn_out.weight",
    "attention.output.dense.bias": "attn_out.bias",
    "attention.output.LayerNorm.weight": "attn_norm.weight",
    "attention.output.LayerNorm.bias": "attn_norm.bias",
    "intermediate.dense.weight": "ffn_in.weight",
    "intermediate.dense.bias": "ffn_in.bias",
    "output.dense.weight": "ffn_out.weight",
    "output.dense.bias": "ffn_out.bias",
    "output.LayerNorm.weight": "ffn_norm.weight",
    "output.LayerNorm.bias": "ffn_norm.bias",
}
_QKV = ("query", "key", "value")
# head groups: group -> {HF name: bertperf name} (bertperf names relative to the model root;
# the pooler lives inside the encoder: `bert.pooler` on head models)
_HEADS = {
    "pooler": {"pooler.dense.weight": "pooler.weight", "pooler.dense.bias": "pooler.bias"},
    "mlm": {
        "cls.predictions.transform.dense.weight": "mlm.transform.weight",
        "cls.predictions.transform.dense.bias": "mlm.transform.bias",
        "cls.predictions.transform.LayerNorm.weight": "mlm.norm.weight",
        "cls.predictions.transform.LayerNorm.bias": "mlm.norm.bias",
        "cls.predictions.bias": "mlm.bias",
    },
    "nsp": {"cls.seq_relationship.weight": "nsp.weight", "cls.seq_relationship.bias": "nsp.bias"},
    "classifier": {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"},
    "qa_outputs": {"qa_outputs.weight": "qa_outputs.weight", "qa_outputs.bias": "qa_outputs.bias"},
}
_DECODER_W = "cls.predictions.decoder.weight"
_DECODER_B = "cls.predictions.decoder.bias"
_TIED_OURS = ("mlm.decoder.weight",)  # bertperf state_dict entries that are ties, never saved
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def _is_base_model(model: "BertPreTrainedModel") -> bool:
    return not hasattr(model, "bert")


def _encoder_prefix(model: "BertPreTrainedModel") -> str:
    """Where the encoder sits in the bertperf model ('' for BertModel, 'bert.' for heads)."""
    return "" if _is_base_model(model) else "bert."


def _head_groups(model: "BertPreTrainedModel") -> list[str]:
    """Head groups `model` has (pooler included when the encoder has one)."""
    enc = model if _is_base_model(model) else model.bert  # type: ignore[attr-defined]
    groups = ["pooler"] if enc.pooler is not None else []
    return groups + [g for g in ("mlm", "nsp", "classifier", "qa_outputs") if hasattr(model, g)]


# --------------------------------------------------------------------------------------------
# HF -> bertperf
# --------------------------------------------------------------------------------------------


def _normalize_hf_key(key: str) -> str:
    """Strip the `bert.` prefix and rename TF-era gamma/beta."""
    if key.startswith("bert."):
        key = key[len("bert."):]
    if key.endswith(".gamma"):
        key = key[: -len(".gamma")] + ".weight"
    elif key.endswith(".beta"):
        key = key[: -len(".beta")] + ".bias"
    return key


@dataclass
class HFStateSplit:
    """An HF state dict sorted into bertperf names (relative to the encoder for `encoder`, to the
    model root for heads), plus what did not fit."""

    encoder: dict[str, Tensor] = field(default_factory=dict)
    heads: dict[str, dict[str, Tensor]] = field(default_factory=lambda: defaultdict(dict))
    decoder_weight: Tensor | None = None
    unknown: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def split_hf_state(hf_state: Mapping[str, Tensor]) -> HFStateSplit:
    """Map HF names to bertperf names. q, k, v of each layer are concatenated into qkv; a q/k/v
    set missing a part is reported as unknown keys (they cannot be used)."""
    out = HFStateSplit()
    qkv: dict[int, dict[str, tuple[str, Tensor]]] = defaultdict(dict)  # layer -> part -> (raw, t)
    head_lookup = {hf: (g, ours) for g, table in _HEADS.items() for hf, ours in table.items()}
    decoder_bias = None
    for raw, t in hf_state.items():
        key = _normalize_hf_key(raw)
        if key.endswith("position_ids"):
            out.ignored.append(raw)
        elif key in _EMBEDDINGS:
            out.encoder[_EMBEDDINGS[key]] = t
        elif (m := _LAYER_RE.match(key)) is not None:
            n, rest = int(m.group(1)), m.group(2)
            parts = rest.split(".")
            if len(parts) == 4 and parts[:2] == ["attention", "self"] and parts[2] in _QKV \
                    and parts[3] in ("weight", "bias"):
                qkv[n][f"{parts[2]}.{parts[3]}"] = (raw, t)
            elif rest in _LAYER:
                out.encoder[f"layers.{n}.{_LAYER[rest]}"] = t
            else:
                out.unknown.append(raw)
        elif key in head_lookup:
            group, ours = head_lookup[key]
            out.heads[group][ours] = t
        elif key == _DECODER_W:
            out.decoder_weight = t
        elif key == _DECODER_B:
            decoder_bias = t
        else:
            out.unknown.append(raw)
    for n, parts in qkv.items():
        for kind in ("weight", "bias"):
            names = [f"{p}.{kind}" for p in _QKV]
            if all(x in parts for x in names):
                out.encoder[f"layers.{n}.qkv.{kind}"] = torch.cat([parts[x][1] for x in names], dim=0)
            else:
                out.unknown += [parts[x][0] for x in names if x in parts]
    if decoder_bias is not None:
        mlm = out.heads["mlm"]
        if "mlm.bias" not in mlm:
            mlm["mlm.bias"] = decoder_bias
        elif not torch.equal(mlm["mlm.bias"], decoder_bias):
            raise BertperfError("checkpoint has cls.predictions.bias and cls.predictions.decoder.bias "
                                "with different values; bertperf ties them (as BERT does)")
    return out


# --------------------------------------------------------------------------------------------
# bertperf -> HF
# --------------------------------------------------------------------------------------------


def to_hf_state(model: "BertPreTrainedModel") -> dict[str, Tensor]:
    """The model's parameters under HF names, as HF's `save_pretrained` of the class
    `model.hf_architecture` writes them (tied decoder omitted; contiguous CPU copies)."""
    enc_prefix = _encoder_prefix(model)
    hf_prefix = "" if _is_base_model(model) else "bert."
    inv_emb = {v: k for k, v in _EMBEDDINGS.items()}
    inv_layer = {v: k for k, v in _LAYER.items()}
    inv_heads = {ours: hf for table in _HEADS.values() for hf, ours in table.items()}
    h = model.config.hidden_size
    out: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu")
        if name in _TIED_OURS:
            continue
        local = name[len(enc_prefix):] if name.startswith(enc_prefix) else None
        if local is not None and local in inv_emb:
            out[hf_prefix + inv_emb[local]] = t
        elif local is not None and local.startswith("layers."):
            _, n, rest = local.split(".", 2)
            base = f"{hf_prefix}encoder.layer.{n}."
            if rest.startswith("qkv."):
                kind = rest.split(".", 1)[1]
                for i, part in enumerate(_QKV):
                    out[f"{base}attention.self.{part}.{kind}"] = t[i * h:(i + 1) * h]
            else:
                out[base + inv_layer[rest]] = t
        elif local is not None and local in ("pooler.weight", "pooler.bias"):
            out[hf_prefix + inv_heads[local]] = t
        elif name in inv_heads:
            out[inv_heads[name]] = t
        else:
            raise BertperfError(f"internal: no HF name for parameter {name!r}")
    return {k: v.contiguous().clone() for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_hf_weights(path: str) -> dict[str, Tensor]:
    """Tensors of an HF directory: model.safetensors, its sharded index, or pytorch_model.bin."""
    from safetensors.torch import load_file

    st, idx, pt = (os.path.join(path, f) for f in (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN))
    try:
        if os.path.isfile(st):
            return load_file(st)
        if os.path.isfile(idx):
            with open(idx, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for s in shards:
                state.update(load_file(os.path.join(path, s)))
            return state
        if os.path.isfile(pt):
            state = torch.load(pt, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise BertperfError(f"{pt}: expected a state dict, got {type(state).__name__}")
            return state
    except BertperfError:
        raise
    except Exception as e:  # corrupt or truncated files
        raise BertperfError(f"{path}: cannot read the weights ({type(e).__name__}: {e})") from None
    raise BertperfError(
        f"{path}: no weights found: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}")


def _read_config_json(path: str) -> dict[str, Any]:
    cfg = os.path.join(path, CONFIG)
    if not os.path.exists(path):
        raise BertperfError(f"{path}: model directory not found")
    if not os.path.isdir(path):
        raise BertperfError(f"{path}: not a directory (from_pretrained wants a HuggingFace model directory)")
    if not os.path.isfile(cfg):
        raise BertperfError(f"{path}: no {CONFIG} (from_pretrained wants a HuggingFace model directory)")
    with open(cfg, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise BertperfError(f"{cfg}: not valid JSON ({e})") from None


def _num_labels(path: str, raw_cfg: dict[str, Any], split: HFStateSplit, group: str,
                num_labels: int | None) -> int:
    """num_labels for a classifier head: the argument, else the checkpoint's classifier rows,
    else config.json's id2label."""
    ckpt = split.heads.get(group, {}).get(f"{group}.weight")
    if num_labels is None:
        if ckpt is not None:
            return int(ckpt.shape[0])
        if isinstance(raw_cfg.get("id2label"), dict) and raw_cfg["id2label"]:
            return len(raw_cfg["id2label"])
        raise BertperfError(f"{path}: the checkpoint has no classifier and config.json no id2label: "
                            f"pass num_labels=")
    return num_labels


def load_pretrained(cls: type, path: "str | os.PathLike[str]", num_labels: int | None = None,
                    **overrides: Any) -> Any:
    """Build `cls` (a bertperf model class) from the HF directory `path`.

    overrides: BertConfig fields (e.g. hidden_dropout_prob=0.0, kernel_backend). The returned
    model has `loading_info = {"initialized": [...], "dropped": [...]}` (head groups freshly
    initialised / checkpoint head groups the class has no place for)."""
    path = os.fspath(path)
    raw_cfg = _read_config_json(path)
    config = BertConfig.from_dict(raw_cfg, source=os.path.join(path, CONFIG), **overrides)
    split = split_hf_state(read_hf_weights(path))
    if split.unknown:
        raise BertperfError(f"{path}: unexpected parameters in the checkpoint (not a BERT encoder or a "
                            f"known head): {', '.join(sorted(split.unknown))}")
    from bertperf.model.heads import BertForSequenceClassification, BertForTokenClassification

    if issubclass(cls, (BertForSequenceClassification, BertForTokenClassification)):
        model = cls(config, num_labels=_num_labels(path, raw_cfg, split, "classifier", num_labels))
    else:
        if num_labels is not None:
            raise BertperfError(f"num_labels applies to classification models, not {cls.__name__}")
        model = cls(config)
    load_split_into(model, split, source=path)
    return model


def load_split_into(model: "BertPreTrainedModel", split: HFStateSplit, source: str) -> None:
    """Copy a split HF state into `model` (strict on the encoder, per group on heads)."""
    enc_prefix = _encoder_prefix(model)
    wanted_groups = _head_groups(model)
    state: dict[str, Tensor] = {enc_prefix + k: v for k, v in split.encoder.items()}
    initialized, dropped = [], []
    for group, tensors in list(split.heads.items()):
        if not tensors:
            continue
        if group not in wanted_groups:
            dropped.append(group)
            continue
        names = list(_HEADS[group].values())
        missing = [n for n in names if n not in tensors]
        if missing:
            raise BertperfError(f"{source}: head `{group}` is incomplete in the checkpoint: "
                                f"missing {', '.join(missing)} (HF names "
                                f"{', '.join(k for k, v in _HEADS[group].items() if v in missing)})")
        prefix = enc_prefix if group == "pooler" else ""
        state.update({prefix + k: v for k, v in tensors.items()})
    for group in wanted_groups:
        if not split.heads.get(group):
            initialized.append(group)

    own = model.state_dict()
    expected = {k for k in own if k not in _TIED_OURS}
    for group in initialized:
        prefix = enc_prefix if group == "pooler" else ""
        expected -= {prefix + n for n in _HEADS[group].values()}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise BertperfError(
            f"{source}: the checkpoint does not fit {type(model).__name__} "
            f"(num_hidden_layers={model.config.num_hidden_layers}): "
            + (f"missing {', '.join(missing)}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {', '.join(unexpected)}" if unexpected else ""))
    bad = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise BertperfError(f"{source}: shape mismatch with config.json: {'; '.join(bad)}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    if split.decoder_weight is not None and "mlm" in wanted_groups and "mlm" not in initialized:
        word = own[enc_prefix + "embeddings.word.weight"]
        if split.decoder_weight.shape != word.shape or not torch.equal(split.decoder_weight.to(word.dtype), word):
            raise BertperfError(f"{source}: cls.predictions.decoder.weight differs from the word "
                                f"embeddings; bertperf ties them (as BERT does)")
    model.tie_weights()
    if initialized:
        log.warning("%s: %s freshly initialised (not in the checkpoint)", source, ", ".join(initialized))
    if dropped:
        log.info("%s: checkpoint heads not used by %s: %s", source, type(model).__name__, ", ".join(dropped))
    model.loading_info = {"initialized": initialized, "dropped": dropped}  # type: ignore[attr-defined]


def save_pretrained(model: "BertPreTrainedModel", path: "str | os.PathLike[str]") -> None:
    """Write `config.json` (architectures, model_type bert) and `model.safetensors` into the
    directory `path` (created if needed), each to a temporary name then renamed."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = to_hf_state(model)
    tmp = os.path.join(path, f".{SAFETENSORS}.tmp.{os.getpid()}")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path, SAFETENSORS))
    cfg = model.config.to_hf_dict(architectures=[model.hf_architecture])
    cfg.update(model.hf_config_extra())
    write_json_atomic(os.path.join(path, CONFIG), cfg)
