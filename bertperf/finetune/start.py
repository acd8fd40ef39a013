"""Where a fine-tuning run starts: what `--model` may name, and building the task model from it.

`--model` is one of (checked in this order):

- a HuggingFace directory (config.json + model.safetensors / pytorch_model.bin), e.g. a
  `save_pretrained` export, the `best/` of an earlier fine-tuning run or .data/minilm;
- a bertperf pretraining output directory (`bertperf/pretrain.py --output_dir`): its `hf/`
  export is used when present, else its `checkpoints/`;
- a bertperf / DeepSpeed checkpoints directory (`<output_dir>/checkpoints`, with `latest` and
  `global_step<N>/trainer_state.json`) or one `global_step<N>` tag directory inside it: the
  fp32 weights are read from `mp_rank_00_model_states.pt`, or consolidated with DeepSpeed's
  zero_to_fp32 when the module copy there is partial or 16-bit (ZeRO-3, bf16);
- a Google TensorFlow checkpoint: a directory holding `bert_model.ckpt.{index,data-*}` and
  `bert_config.json` (+ vocab.txt), or the prefix `.../bert_model.ckpt` (`bertperf.convert.tf`,
  no TensorFlow needed);
- a BertConfig preset name or JSON: a randomly initialised model (`--vocab` required).

The vocab defaults to the vocab.txt found with the weights (`ModelSource.vocab`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

MODEL_CLASSES = {"classification": "BertForSequenceClassification", "regression": "BertForSequenceClassification",
                 "token": "BertForTokenClassification", "qa": "BertForQuestionAnswering"}
KINDS = ("hf", "ds_checkpoint", "tf", "config")


@dataclass
class ModelSource:
    kind: str  # one of KINDS
    path: str  # the directory / prefix / tag directory / config spec to load
    vocab: str | None  # vocab.txt that came with it, if any


def _is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, f)) for f in
        ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))


def _vocab_in(*dirs: str) -> str | None:
    for d in dirs:
        v = os.path.join(d, "vocab.txt")
        if os.path.isfile(v):
            return v
    return None


def _ds_tag_dir(path: str) -> str | None:
    """The checkpoint tag directory `path` names (a checkpoints dir with `latest`, or a tag dir)."""
    if os.path.isfile(os.path.join(path, "trainer_state.json")):
        return path
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest, encoding="utf-8") as f:
            tag = f.read().strip()
        tag_dir = os.path.join(path, tag)
        if not tag or not os.path.isdir(tag_dir):
            raise BertperfError(f"{latest} names checkpoint {tag!r}, which is not in {path}; "
                                "point `latest` at an existing global_step<N> directory")
        return tag_dir
    return None


def describe(spec: str) -> ModelSource:
    """Classify `--model` (module doc). Raises BertperfError for a directory that is none of them."""
    from bertperf.convert.tf import find_tf_checkpoint

    spec = os.fspath(spec)
    if os.path.isdir(spec):
        if _is_hf_dir(spec):
            return ModelSource("hf", spec, _vocab_in(spec))
        hf = os.path.join(spec, "hf")
        if _is_hf_dir(hf):
            return ModelSource("hf", hf, _vocab_in(hf))
        for d in (spec, os.path.join(spec, "checkpoints")):
            tag_dir = _ds_tag_dir(d) if os.path.isdir(d) else None
            if tag_dir is not None:
                root = os.path.dirname(os.path.abspath(tag_dir))
                return ModelSource("ds_checkpoint", tag_dir,
                                   _vocab_in(os.path.join(os.path.dirname(root), "hf"), root))
    tf = find_tf_checkpoint(spec)
    if tf is not None:
        return ModelSource("tf", tf.prefix, tf.vocab)
    if os.path.isdir(spec):
        raise BertperfError(f"{spec}: not a model directory: expected an HF directory (config.json + "
                            "model.safetensors), a bertperf pretraining output (hf/ or checkpoints/), a "
                            "DeepSpeed checkpoints dir (latest + global_step<N>/) or a TF checkpoint "
                            "(bert_model.ckpt.index + bert_config.json)")
    return ModelSource("config", spec, None)


def read_ds_checkpoint(tag_dir: str) -> tuple[Any, dict[str, Any]]:
    """(BertConfig, fp32 bertperf state dict of BertForPreTraining) of a bertperf pretraining checkpoint."""
    import json

    import torch

    from bertperf.model.config import BertConfig

    state_file = os.path.join(tag_dir, "trainer_state.json")
    try:
        with open(state_file, encoding="utf-8") as f:
            config = BertConfig.from_dict(json.load(f)["model_config"], flavor="hf", source=state_file)
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise BertperfError(f"{state_file}: cannot read the model config ({type(e).__name__}: {e}); "
                            "is this a bertperf pretraining checkpoint?") from None
    states = os.path.join(tag_dir, "mp_rank_00_model_states.pt")
    if not os.path.isfile(states):
        raise BertperfError(f"{states}: missing; the checkpoint is incomplete (or pipeline-parallel: "
                            "fine-tune from the run's hf/ export instead)")
    try:
        saved = torch.load(states, map_location="cpu", weights_only=False)  # DeepSpeed's own pickle
    except Exception as e:
        raise BertperfError(f"{states}: unreadable ({type(e).__name__}: {e})") from None
    module = saved.get("module") or {}
    ds_cfg = saved.get("ds_config") or {}
    stage = int((ds_cfg.get("zero_optimization") or {}).get("stage", 0) or 0)
    partial = stage == 3 or not module or any(t.dtype != torch.float32 for t in module.values())
    if partial:
        import contextlib
        import io

        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        root, tag = os.path.split(os.path.abspath(tag_dir))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            module = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    return config, {k: v.float() for k, v in module.items()}


def load_from_ds_checkpoint(cls: type, tag_dir: str, num_labels: int | None, **overrides: Any) -> Any:
    """`cls` with the encoder (and the heads it shares) of a bertperf pretraining checkpoint."""
    from bertperf.convert.hf import load_split_into, split_hf_state, to_hf_state
    from bertperf.model import BertForPreTraining

    config, state = read_ds_checkpoint(tag_dir)
    pre = BertForPreTraining(config)
    missing, unexpected = pre.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "mlm.decoder.weight"]  # tied to the word embeddings
    if missing or unexpected:
        raise BertperfError(f"{tag_dir}: the checkpoint does not fit BertForPreTraining: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    split = split_hf_state(to_hf_state(pre))
    config = config.replace(**overrides) if overrides else config
    model = cls(config) if num_labels is None else cls(config, num_labels=num_labels)
    load_split_into(model, split, source=tag_dir)
    return model


def build_model(head: str, spec: str, num_labels: int, vocab_size: int, **overrides: Any):
    """The task model (`MODEL_CLASSES[head]`) from `--model` (module doc); overrides are
    BertConfig fields (e.g. kernel_backend). Returns (model, ModelSource)."""
    import bertperf.model as bm

    cls = getattr(bm, MODEL_CLASSES[head], None)
    if cls is None:
        raise BertperfError(f"bertperf.model has no {MODEL_CLASSES[head]}; the model package is incomplete")
    labels = None if cls.__name__ == "BertForQuestionAnswering" else num_labels
    src = describe(spec)
    if src.kind == "hf":
        kw = dict(overrides, **({} if labels is None else {"num_labels": labels}))
        model = cls.from_pretrained(src.path, **kw)
    elif src.kind == "tf":
        from bertperf.convert.tf import load_tf_pretrained

        model = load_tf_pretrained(cls, src.path, num_labels=labels, **overrides)
    elif src.kind == "ds_checkpoint":
        model = load_from_ds_checkpoint(cls, src.path, labels, **overrides)
    else:
        config = bm.BertConfig.resolve(spec, vocab_size=vocab_size, **overrides)
        model = cls(config) if labels is None else cls(config, labels)
    if model.config.vocab_size < vocab_size:
        raise BertperfError(f"{spec}: the model has {model.config.vocab_size} word embeddings but the vocab "
                            f"has {vocab_size} tokens: pass the vocab.txt the model was trained with (--vocab)")
    log.info("model: %s from %s (%s)", cls.__name__, src.path, src.kind)
    return model, src
