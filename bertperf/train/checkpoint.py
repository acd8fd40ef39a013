"""Checkpoints (DeepSpeed format, resumable, written atomically) and the Hugging Face export.

Layout under `<output_dir>/checkpoints/`:

    latest                          name of the newest complete tag (replaced atomically, last)
    global_step<N>/                 one DeepSpeed checkpoint: mp_rank_00_model_states.pt (module,
                                    lr scheduler, client_state) and the ZeRO optimizer partitions
        trainer_state.json          bertperf's state, human-readable: step, data position (sampler
                                    epoch/offset), seed, world size, model config, ZeRO stage
        rng_rank<R>.pt              RNG states of rank R (torch CPU, python `random`, numpy's
                                    global generator), for an exact continuation
    .staging/                       a checkpoint being written (never read by a resume)

Atomicity: every rank writes the new checkpoint into `.staging/<tag>/`; when all are done, rank 0
renames it to `<tag>/` (one rename) and then replaces `latest` (write a temporary file, rename).
A crash at any moment leaves `latest` naming a complete checkpoint; `find_resume_tag` also falls
back to the newest complete tag if `latest` names a missing or incomplete one. Rank 0 does the
renames, so the checkpoint directory must be on a filesystem shared by all nodes (as DeepSpeed's
own checkpoint loading assumes). Older tags beyond the last `keep_last` are removed after each save.

The bertperf state also travels in DeepSpeed's `client_state["bertperf"]`; `trainer_state.json`
lets a resuming run check the model config before it builds anything. The HF export is a
`save_pretrained` directory with fp32 weights, consolidated from the ZeRO partitions when the
module's own copy is partitioned (ZeRO-3) or only 16-bit (bf16 with ZeRO-1/2/3).

Offline export of one checkpoint (any ZeRO stage, fp32 or bf16) to a single fp32 HF directory:

    python -m bertperf.train.checkpoint CKPT_DIR OUT [--tag global_step<N>] [--vocab vocab.txt]
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
from typing import Any

import numpy as np
import torch

from bertperf.train.engine import barrier
from bertperf.utils.atomic import atomic_path, atomic_write_text
from bertperf.utils.errors import BertperfError, run_cli

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
STAGING_DIR = ".staging"
MODEL_STATES = "mp_rank_00_model_states.pt"
TAG_RE = re.compile(r"global_step(\d+)$")


def tag_for_step(step: int) -> str:
    return f"global_step{step}"


def _atomic_write_text(path: str, text: str) -> None:
    atomic_write_text(path, text)


def _atomic_torch_save(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states: torch CPU, python `random`, numpy's global generator.

    Stored with plain types and tensors only, so `torch.load(weights_only=True)` reads it back."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (files written before python/numpy were saved hold torch only)."""
    torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state({"bit_generator": s["bit_generator"],
                             "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]},
                             "has_gauss": s["has_gauss"], "gauss": s["gauss"]})


# ---------------------------------------------------------------------------------------------- tags


def latest_tag(ckpt_dir: str) -> str | None:
    """The tag named by `ckpt_dir/latest`, or None when there is no checkpoint."""
    path = os.path.join(ckpt_dir, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        tag = f.read().strip()
    return tag or None


def checkpoint_tags(ckpt_dir: str) -> list[str]:
    """The `global_step<N>` directories in `ckpt_dir`, by increasing N (complete or not)."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(ckpt_dir)
             if (m := TAG_RE.match(name)) and os.path.isdir(os.path.join(ckpt_dir, name))]
    return [name for _, name in sorted(found)]


def is_complete(tag_dir: str) -> bool:
    """True when `tag_dir` holds bertperf's state and DeepSpeed's model states (one file per model-
    parallel rank, or pipeline layer files)."""
    if not os.path.isfile(os.path.join(tag_dir, STATE_FILE)):
        return False
    return (os.path.isfile(os.path.join(tag_dir, MODEL_STATES))
            or bool(glob.glob(os.path.join(tag_dir, "*model_states.pt"))))


def find_resume_tag(ckpt_dir: str) -> str | None:
    """The tag a resume should load: the one `latest` names when complete, else (with a warning)
    the newest complete `global_step<N>`; None when there is no checkpoint at all."""
    tag = latest_tag(ckpt_dir)
    if tag is not None and is_complete(os.path.join(ckpt_dir, tag)):
        return tag
    complete = [t for t in checkpoint_tags(ckpt_dir) if is_complete(os.path.join(ckpt_dir, t))]
    if not complete:
        if tag is not None:
            raise BertperfError(f"{os.path.join(ckpt_dir, tag)}: 'latest' names an incomplete or missing checkpoint "
                                "and no other complete checkpoint is there; start without --resume")
        return None
    log.warning("%s: 'latest' names %s, which is %s; resuming from %s, the newest complete checkpoint",
                ckpt_dir, tag, "missing or incomplete" if tag else "absent", complete[-1])
    return complete[-1]


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


# ---------------------------------------------------------------------------------------------- save / load


def _remove_dir(path: str, ckpt_dir: str) -> None:
    """Delete a tag directory without ever leaving a half-deleted `global_step<N>` behind: it is
    first renamed into the staging area."""
    trash = tempfile.mkdtemp(prefix="removing-", dir=os.path.join(ckpt_dir, STAGING_DIR))
    os.replace(path, os.path.join(trash, os.path.basename(path)))
    shutil.rmtree(trash, ignore_errors=True)


def _commit(ckpt_dir: str, tag: str, keep_last: int) -> None:
    """Rank 0, after every rank has written `.staging/<tag>`: move it into place, point `latest` at
    it, then drop tags beyond the newest `keep_last` (0 keeps all)."""
    final = os.path.join(ckpt_dir, tag)
    if os.path.isdir(final):
        _remove_dir(final, ckpt_dir)
    os.chmod(os.path.join(ckpt_dir, STAGING_DIR, tag), 0o755)
    os.replace(os.path.join(ckpt_dir, STAGING_DIR, tag), final)
    _atomic_write_text(os.path.join(ckpt_dir, LATEST_FILE), tag)
    for script in ("zero_to_fp32.py", "zero_to_torch.py"):  # DeepSpeed's recovery scripts, next to 'latest'
        if os.path.isfile(os.path.join(ckpt_dir, STAGING_DIR, script)):
            os.replace(os.path.join(ckpt_dir, STAGING_DIR, script), os.path.join(ckpt_dir, script))
    if keep_last > 0:  # incomplete tag directories (not written by this module) are left alone
        complete = [t for t in checkpoint_tags(ckpt_dir) if is_complete(os.path.join(ckpt_dir, t))]
        for old in complete[:-keep_last]:
            if old != tag:
                _remove_dir(os.path.join(ckpt_dir, old), ckpt_dir)


def save_checkpoint(engine: Any, ckpt_dir: str, step: int, state: dict[str, Any], rank: int,
                    keep_last: int = 0) -> str:
    """Save a DeepSpeed checkpoint of `engine` at `step` with bertperf's `state`; returns the tag.

    Collective: every rank must call it. Atomic (see the module docstring): written under
    `.staging/`, renamed into place by rank 0, `latest` updated last. An existing directory of the
    same tag is replaced. `keep_last` > 0 removes all but the newest `keep_last` tags afterwards.
    """
    tag = tag_for_step(step)
    staging = os.path.join(ckpt_dir, STAGING_DIR)
    tmp_dir = os.path.join(staging, tag)
    if rank == 0:
        if os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir)  # left by a run that crashed during this save
        os.makedirs(tmp_dir)
        _atomic_write_text(os.path.join(tmp_dir, STATE_FILE), json.dumps(state, indent=2, sort_keys=True) + "\n")
    barrier()
    _atomic_torch_save(capture_rng_state(), os.path.join(tmp_dir, f"rng_rank{rank}.pt"))
    engine.save_checkpoint(staging, tag=tag, client_state={"bertperf": state}, save_latest=False)
    barrier()
    if rank == 0:
        _commit(ckpt_dir, tag, keep_last)
    barrier()
    return tag


def load_checkpoint(engine: Any, ckpt_dir: str, tag: str, rank: int) -> dict[str, Any]:
    """Load checkpoint `tag` into `engine` (module, optimizer, lr scheduler, step count) and this
    rank's RNG states; returns bertperf's state from the client_state. Collective."""
    path, client_state = engine.load_checkpoint(ckpt_dir, tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None or not client_state or "bertperf" not in client_state:
        raise BertperfError(f"{os.path.join(ckpt_dir, tag)}: DeepSpeed could not load this checkpoint "
                            "(incomplete, or written by another tool)")
    rng_path = os.path.join(ckpt_dir, tag, f"rng_rank{rank}.pt")
    if os.path.isfile(rng_path):
        restore_rng_state(torch.load(rng_path, weights_only=True))
    else:
        log.warning("%s: no RNG state for rank %d (the run had fewer ranks); dropout masks will differ "
                    "from an uninterrupted run", rng_path, rank)
    return client_state["bertperf"]


# ---------------------------------------------------------------------------------------------- fp32 weights


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
    return _zero_to_fp32(ckpt_dir, tag)


def _zero_to_fp32(ckpt_dir: str, tag: str) -> dict[str, torch.Tensor]:
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


def consolidate_fp32(ckpt_dir: str, tag: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """(BertConfig, fp32 state dict of `BertForPreTraining`) from a saved checkpoint, on one process.

    ZeRO-1/2/3 (fp32 or bf16): DeepSpeed's zero_to_fp32 over the optimizer partitions. ZeRO-0: the
    module in `mp_rank_00_model_states.pt`, with bf16 parameters replaced by the fp32 masters that
    DeepSpeed's bf16 wrapper saved per param group (bertperf's groups, rebuilt from the config).
    """
    from bertperf.model import BertConfig, BertForPreTraining
    from bertperf.train.optimizers import param_groups

    tag_dir = os.path.join(ckpt_dir, tag)
    if not os.path.isdir(tag_dir):
        raise BertperfError(f"{tag_dir}: no such checkpoint; tags here: {checkpoint_tags(ckpt_dir) or 'none'}")
    state = read_trainer_state(ckpt_dir, tag)
    config = BertConfig.from_dict(state["model_config"], source=os.path.join(tag_dir, STATE_FILE))
    from bertperf.model.pipeline import is_pipeline_checkpoint, pipeline_checkpoint_weights

    if is_pipeline_checkpoint(tag_dir):  # its layer files, which zero_to_fp32 cannot read
        return config, pipeline_checkpoint_weights(tag_dir, config.num_hidden_layers)
    if glob.glob(os.path.join(tag_dir, "*zero_pp_rank_*_optim_states.pt")):
        return config, _zero_to_fp32(ckpt_dir, tag)
    path = os.path.join(tag_dir, MODEL_STATES)
    if not os.path.isfile(path):
        raise BertperfError(f"{tag_dir}: neither {MODEL_STATES} nor ZeRO partitions found (a pipeline-parallel "
                            "checkpoint? its run exports hf/ itself)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    weights = {k: v.float() for k, v in saved["module"].items()}
    masters = (saved.get("optimizer") or {}).get("fp32_groups") if isinstance(saved.get("optimizer"), dict) else None
    if masters:
        model = BertForPreTraining(config)
        names: dict[int, list[str]] = {}  # a tied parameter has several names, all in the state dict
        for n, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(n)
        for group, fp32 in zip(param_groups(model, 0.0, frozenset()), masters):
            for param, master in zip(group["params"], fp32):
                if master.shape != param.shape:
                    raise BertperfError(f"{path}: fp32 master of shape {tuple(master.shape)} does not match "
                                        f"{names[id(param)][0]} {tuple(param.shape)}; the checkpoint is from another model")
                for name in names[id(param)]:
                    weights[name] = master.float()
    return config, weights


def export_hf(model_cls: Any, config: Any, state_dict: dict[str, torch.Tensor], out_dir: str,
              vocab_file: str | None = None) -> None:
    """Write `model_cls(config)` with `state_dict` as a Hugging Face directory at `out_dir`.

    Built in a temporary sibling directory and renamed into place (an older export is replaced).
    `vocab_file`, when given, is copied as vocab.txt so the directory carries its tokenizer vocab.
    """
    model = model_cls(config)
    load_weights(model, state_dict)
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


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """`model.load_state_dict(state_dict)`, where a tied weight may be stored under one of its names only."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not _is_tied_copy(model, k, state_dict)]
    if missing or unexpected:
        raise RuntimeError(f"state dict does not match {type(model).__name__}: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def _is_tied_copy(model: torch.nn.Module, key: str, state_dict: dict[str, torch.Tensor]) -> bool:
    """True when parameter `key` of `model` shares storage with a parameter that `state_dict` has."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(p is params[key] and name in state_dict for name, p in params.items() if name != key)


def resolve_checkpoint(path: str, tag: str | None = None) -> tuple[str, str]:
    """(checkpoints dir, tag) from a run's output dir, its checkpoints/ dir, or one tag dir."""
    path = os.path.abspath(path)
    if tag is None and is_complete(path) and TAG_RE.match(os.path.basename(path)):
        return os.path.dirname(path), os.path.basename(path)
    for ckpt_dir in (path, os.path.join(path, "checkpoints")):
        if os.path.isfile(os.path.join(ckpt_dir, LATEST_FILE)) or checkpoint_tags(ckpt_dir):
            found = tag or find_resume_tag(ckpt_dir)
            if found is not None:
                return ckpt_dir, found
    raise BertperfError(f"{path}: no bertperf checkpoint here (expected a run's output dir, its checkpoints/ "
                        "dir with 'latest', or a global_step<N> dir)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bertperf.train.checkpoint",
        description="Consolidate one pre-training checkpoint (any ZeRO stage, fp32 or bf16) into a single "
                    "fp32 Hugging Face BertForPreTraining directory.")
    p.add_argument("checkpoint", metavar="CKPT",
                   help="a run's OUTPUT_DIR, its checkpoints/ dir, or one checkpoints/global_step<N> dir")
    p.add_argument("out", metavar="OUT", help="directory to write (replaced if it exists)")
    p.add_argument("--tag", default=None, help="tag to export (default: the one 'latest' names)")
    p.add_argument("--vocab", default=None, metavar="FILE", help="vocab.txt to copy into OUT")
    args = p.parse_args(argv)
    from bertperf.model import BertForPreTraining

    ckpt_dir, tag = resolve_checkpoint(args.checkpoint, args.tag)
    if args.vocab and not os.path.isfile(args.vocab):
        raise BertperfError(f"{args.vocab}: --vocab file not found")
    config, weights = consolidate_fp32(ckpt_dir, tag)
    export_hf(BertForPreTraining, config, weights, args.out, args.vocab)
    print(f"exported {os.path.join(ckpt_dir, tag)} -> {args.out} (fp32, {sum(v.numel() for v in weights.values()) / 1e6:.1f}M values)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(), prog="python -m bertperf.train.checkpoint"))
