"""Checkpoints (DeepSpeed format, resumable) and the final Hugging Face export.

Layout under `<output_dir>/checkpoints/`:

    latest                          DeepSpeed's pointer to the newest complete tag (written last)
    global_step<N>/                 one DeepSpeed checkpoint: mp_rank_00_model_states.pt (module,
                                    lr scheduler, client_state) and the ZeRO optimizer partitions
        trainer_state.json          bertperf's state, human-readable: step, data position (sampler
                                    epoch/offset), seed, world size, model config
        rng_rank<R>.pt              torch RNG state of rank R (dropout), for an exact continuation

The bertperf state also travels in DeepSpeed's `client_state["bertperf"]`; `trainer_state.json`
lets a resuming run check the model config before it builds anything. The HF export is a
`save_pretrained` directory with fp32 weights, consolidated from the ZeRO partitions when the
module's own copy is partitioned (ZeRO-3) or only 16-bit (bf16 with ZeRO-1/2/3).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from typing import Any

import torch

from bertperf.train.engine import barrier
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"


def tag_for_step(step: int) -> str:
    return f"global_step{step}"


def _atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _atomic_torch_save(obj: Any, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    torch.save(obj, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def latest_tag(ckpt_dir: str) -> str | None:
    """The tag named by `ckpt_dir/latest`, or None when there is no checkpoint."""
    path = os.path.join(ckpt_dir, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        tag = f.read().strip()
    return tag or None


def read_trainer_state(ckpt_dir: str, tag: str) -> dict[str, Any]:
    """bertperf's state of checkpoint `tag`; a missing or corrupt file -> BertperfError naming it."""
    path = os.path.join(ckpt_dir, tag, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        raise BertperfError(f"{path}: missing; {os.path.join(ckpt_dir, tag)} is not a complete bertperf "
                            "checkpoint (remove it and point 'latest' at an earlier tag, or start without --resume)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise BertperfError(f"{path}: unreadable trainer state ({e})") from None
    for key in ("step", "sampler", "model_config"):
        if key not in state:
            raise BertperfError(f"{path}: field '{key}' is missing; the checkpoint is incomplete or from another tool")
    return state


def save_checkpoint(engine: Any, ckpt_dir: str, step: int, state: dict[str, Any], rank: int) -> str:
    """Save a DeepSpeed checkpoint of `engine` at `step` with bertperf's `state`; returns the tag.

    Collective: every rank must call it. An existing directory of the same tag is replaced. The
    bertperf files are written before DeepSpeed's, whose `latest` pointer is written last.
    """
    tag = tag_for_step(step)
    tag_dir = os.path.join(ckpt_dir, tag)
    if rank == 0:
        if os.path.isdir(tag_dir):
            shutil.rmtree(tag_dir)  # stale files of another layout would confuse zero_to_fp32
        os.makedirs(tag_dir, exist_ok=True)
        _atomic_write_text(os.path.join(tag_dir, STATE_FILE), json.dumps(state, indent=2, sort_keys=True) + "\n")
    barrier()
    _atomic_torch_save({"torch": torch.get_rng_state()}, os.path.join(tag_dir, f"rng_rank{rank}.pt"))
    engine.save_checkpoint(ckpt_dir, tag=tag, client_state={"bertperf": state})
    barrier()
    return tag


def load_checkpoint(engine: Any, ckpt_dir: str, tag: str, rank: int) -> dict[str, Any]:
    """Load checkpoint `tag` into `engine` (module, optimizer, lr scheduler, step count) and this
    rank's RNG state; returns bertperf's state from the client_state. Collective."""
    path, client_state = engine.load_checkpoint(ckpt_dir, tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None or not client_state or "bertperf" not in client_state:
        raise BertperfError(f"{os.path.join(ckpt_dir, tag)}: DeepSpeed could not load this checkpoint "
                            "(incomplete, or written by another tool)")
    rng_path = os.path.join(ckpt_dir, tag, f"rng_rank{rank}.pt")
    if os.path.isfile(rng_path):
        torch.set_rng_state(torch.load(rng_path, weights_only=True)["torch"])
    else:
        log.warning("%s: no RNG state for rank %d (the run had fewer ranks); dropout masks will differ "
                    "from an uninterrupted run", rng_path, rank)
    return client_state["bertperf"]


def fp32_state_dict(engine: Any, ckpt_dir: str, tag: str, zero_stage: int, bf16: bool) -> dict[str, torch.Tensor]:
    """The model's fp32 weights. Call on one rank after `save_checkpoint` (no collectives).

    - ZeRO-0 and ZeRO-1/2 in fp32: the module's own parameters, complete and exact.
    - ZeRO-0 in bf16: DeepSpeed keeps one fp32 master per parameter in the optimizer wrapper
      (`fp32_groups`, matched to the module's parameters by identity); those are exported.
    - ZeRO-3 (partitioned module) and bf16 under ZeRO-1/2 (fp32 masters live in flat optimizer
      partitions): consolidated from the saved checkpoint with DeepSpeed's zero_to_fp32.
    """
    module = engine.module
    if zero_stage == 0 or (zero_stage in (1, 2) and not bf16):
        weights = {k: v.detach().float().clone() for k, v in module.state_dict().items()}
        if bf16:
            masters = _unfused_masters(engine)
            for name, param in module.named_parameters(remove_duplicate=False):
                if id(param) in masters:
                    weights[name] = masters[id(param)].detach().float().clone()
                else:
                    log.warning("HF export: no fp32 master for %s; exporting its bf16 value", name)
        return weights
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # zero_to_fp32 prints its progress; keep it off the training log
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)


def _unfused_masters(engine: Any) -> dict[int, torch.Tensor]:
    """id(low-precision param) -> its fp32 master, from DeepSpeed's non-ZeRO bf16/fp16 optimizer wrapper."""
    opt = engine.optimizer
    low, high = getattr(opt, "fp16_groups", None), getattr(opt, "fp32_groups", None)
    if not low or not high:
        return {}
    return {id(p): m for lg, hg in zip(low, high) for p, m in zip(lg, hg) if m.shape == p.shape}


def export_hf(model_cls: Any, config: Any, state_dict: dict[str, torch.Tensor], out_dir: str,
              vocab_file: str | None = None) -> None:
    """Write `model_cls(config)` with `state_dict` as a Hugging Face directory at `out_dir`.

    Built in a temporary sibling directory and renamed into place (an older export is replaced).
    `vocab_file`, when given, is copied as vocab.txt so the directory carries its tokenizer vocab.
    """
    model = model_cls(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # a tied decoder weight may be stored under one name only
    missing = [k for k in missing if not _is_tied_copy(model, k, state_dict)]
    if missing or unexpected:
        raise RuntimeError(f"HF export: state dict does not match {model_cls.__name__}: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".", suffix=".tmp", dir=parent)
    try:
        model.save_pretrained(tmp)
        if vocab_file:
            shutil.copyfile(vocab_file, os.path.join(tmp, "vocab.txt"))
        os.chmod(tmp, 0o755)  # mkdtemp and atomic writers create private files; an export is for sharing
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o644)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_tied_copy(model: torch.nn.Module, key: str, state_dict: dict[str, torch.Tensor]) -> bool:
    """True when parameter `key` of `model` shares storage with a parameter that `state_dict` has."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(p is params[key] and name in state_dict for name, p in params.items() if name != key)
