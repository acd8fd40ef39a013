"""BERT pre-training (masked LM + next-sentence prediction) with DeepSpeed.

    deepspeed --num_gpus 2 bertperf/pretrain.py --deepspeed_config configs/ds-demo.json \\
        --model_config tiny --data_dir runs/demo/shards --output_dir runs/demo --max_steps 300
    python bertperf/pretrain.py ...        # the same, as one process without a launcher

On CPU `--num_gpus N` means N ranks (gloo). Every flag is listed by `--help`. The model runs
bertperf's fused kernels and, on CPU, the fused attention path (`--kernel_backend auto`, logged
once per rank; `--kernel_backend torch` is the eager reference with torch's SDPA). NVIDIA's two-phase
recipe (LAMB, ZeRO-1, bf16; configs/ds-phase{1,2}.json for BERT-large, ds-phase{1,2}-base.json
for BERT-base): phase 1 on S=128 shards, then phase 2 on S=512 shards with
`--init_from <phase-1 output_dir>` (its latest checkpoint, consolidated to fp32; or its hf/): fresh
optimizer and schedule, as NVIDIA's phase 2 does.

The DeepSpeed JSON (`--deepspeed_config`) goes to `deepspeed.initialize` as it is (ZeRO stage, bf16,
gradient clipping, ...), except what bertperf takes over (details in `bertperf.train.ds_config`):
- "optimizer": built by bertperf as a client torch optimizer from a small table (AdamW/Adam,
  Lamb from `bertperf.optim.lamb`), because DeepSpeed's Lamb/FusedAdam do not run on CPU;
  biases and LayerNorm weights get no weight decay. Default: AdamW, lr 1e-4, weight decay 0.01.
- "scheduler" of type WarmupPolyDecay / WarmupLinearDecay / WarmupConstant: linear warmup then
  decay (`bertperf.optim.schedules`), total steps defaulting to --max_steps. DeepSpeed's own
  scheduler types are left to DeepSpeed.
- the batch sizes are resolved for the number of ranks and written out in full; Lamb under ZeRO
  gets "zero_allow_untested_optimizer"; "steps_per_print" defaults to never (bertperf logs).

Data: every rank loads the shards of --data_dir (validated before the first step) and reads its
own, disjoint samples of a seeded per-epoch shuffle, streamed one shard at a time
(`bertperf.data.loader.ShardedLoader`); the position is
saved in each checkpoint, so `--resume` continues with the next unseen samples.

Resume and faults: checkpoints are written atomically and hold the data position, the optimizer,
LR schedule and every rank's RNG states (torch, python, numpy), so a run killed at any moment and
restarted with `--resume` repeats the uninterrupted run's losses exactly (`bertperf.train.checkpoint`;
a fresh start refuses a directory holding an earlier run's checkpoints). A step with a NaN/Inf
loss is skipped (no weight update; counted in metrics.csv `skipped` and summary.json);
--max_bad_steps in a row stop the run. A rank that dies stops the job with a line naming it
(`bertperf.train.faults`); collectives time out after --dist_timeout seconds.

Outputs in --output_dir:
    metrics.csv          one row per logged step: loss, MLM/NSP loss and accuracy, lr, global
                         sequences/s and achieved TFLOP/s (`bertperf.report.flops`: 6 FLOPs per
                         weight per token for the encoder, 12*L*s*h per token for attention, the
                         MLM head only at masked positions; stated in that module)
    tensorboard/         the same as TensorBoard scalars (train/*)
    checkpoints/         DeepSpeed checkpoints global_step<N>/ (the last --keep_last) and `latest`;
                         `python -m bertperf.train.checkpoint OUTPUT_DIR OUT` consolidates one
                         to a single fp32 Hugging Face directory
    hf/                  the final model in Hugging Face layout (save_pretrained, fp32; plus
                         vocab.txt when --vocab is given)
    summary.json         final step, loss, throughput and the paths above
Errors in the inputs (shards, vocab, configs) end the run with one line naming the file and
exit code 2, on every rank, before any training.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # `python bertperf/pretrain.py` puts bertperf/ first on sys.path, where its subpackages
    # (data, model, utils, ...) would shadow top-level modules of the same names: drop it.
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
        sys.path.pop(0)
    # training runs on tcmalloc (re-executes this process once; bertperf.utils.malloc says why)
    from bertperf.utils.malloc import relaunch_with_tcmalloc

    relaunch_with_tcmalloc()

import argparse
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

from bertperf.utils.errors import BertperfError, run_cli

log = logging.getLogger("bertperf.pretrain")

EXIT_USER_ERROR = 2
EXIT_RANK_FAILURE = 1
PROG = "pretrain.py"


EPILOG = """\
outputs in OUTPUT_DIR:
  metrics.csv    one row per logged step: step, epoch, samples, loss, mlm_loss, nsp_loss,
                 mlm_acc, nsp_acc, lr, seq_per_s (global), tflops (achieved), elapsed_s,
                 skipped (steps skipped so far for a NaN/Inf loss)
  tensorboard/   the same as TensorBoard scalars
  checkpoints/   DeepSpeed checkpoints global_step<N>/ (the last --keep_last) and 'latest' (what
                 --resume reads); export one: python -m bertperf.train.checkpoint OUTPUT_DIR OUT
  hf/            the final model in Hugging Face layout (fp32), with vocab.txt if --vocab
  summary.json   final step, losses, throughput and these paths

The DeepSpeed JSON goes to deepspeed.initialize as it is, except its "optimizer" (built by
bertperf: AdamW, Adam or Lamb) and a bertperf "scheduler" (WarmupPolyDecay, WarmupLinearDecay,
WarmupConstant); see the docstring of bertperf/pretrain.py. Input errors exit with code 2, as
does --max_bad_steps; a lost rank exits with code 1 and a line naming it.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Pre-train BERT (masked LM + next-sentence prediction) on HDF5 shards with DeepSpeed. "
                    "Launch with `deepspeed --num_gpus N bertperf/pretrain.py ...` for N ranks, or with "
                    "`python bertperf/pretrain.py ...` as one process.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deepspeed_config", required=True, metavar="FILE",
                   help="DeepSpeed JSON (ZeRO stage, bf16, batch sizes, optimizer, scheduler); the optimizer "
                        "and bertperf scheduler sections are built by bertperf, the rest goes to DeepSpeed")
    p.add_argument("--model_config", required=True, metavar="NAME|FILE",
                   help="model size: a preset (tiny, mini, small, base, large) or a BERT config JSON "
                        "(HF config.json or Google bert_config.json)")
    p.add_argument("--kernel_backend", default="auto", metavar="NAME",
                   help="implementation of the model's fused points (LayerNorm, GELU, dropout, softmax): auto "
                        "(default: the device's fused kernels, C++ on CPU, with the fused attention path), cpu, "
                        "cuda, triton, or torch (the eager reference, with torch's SDPA)")
    p.add_argument("--data_dir", required=True, metavar="DIR",
                   help="directory of pre-training shards (*.hdf5 from `bertperf prepare`), or one shard file")
    p.add_argument("--output_dir", required=True, metavar="DIR",
                   help="where metrics.csv, tensorboard/, checkpoints/, hf/ and summary.json go (created)")
    p.add_argument("--max_steps", required=True, type=int, metavar="N",
                   help="train until N optimizer steps in total (counting steps before a --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in OUTPUT_DIR/checkpoints (model, optimizer, "
                        "lr schedule, step, data position, RNG)")
    p.add_argument("--init_from", metavar="DIR", default=None,
                   help="start from the weights of a Hugging Face BERT directory (e.g. phase 1's OUTPUT_DIR/hf, "
                        "or an encoder-only checkpoint: missing heads are initialized) or of a bertperf checkpoint "
                        "(phase 1's OUTPUT_DIR, its checkpoints/ or one global_step<N>/ dir), with a fresh optimizer "
                        "and lr schedule; its shape must match --model_config. Not used with --resume")
    p.add_argument("--log_every", type=int, default=10, metavar="N",
                   help="log loss, accuracies, seq/s and TFLOP/s every N steps and at the last step (default %(default)s)")
    p.add_argument("--save_every", type=int, default=0, metavar="N",
                   help="also save a checkpoint every N steps (0: only at the end)")
    p.add_argument("--keep_last", type=int, default=3, metavar="K",
                   help="keep only the newest K checkpoints in OUTPUT_DIR/checkpoints (0: keep all; default %(default)s)")
    p.add_argument("--max_bad_steps", type=int, default=5, metavar="K",
                   help="a step whose loss is NaN or Inf is skipped (no weight update, counted in metrics); K such "
                        "steps in a row stop the run (default %(default)s)")
    p.add_argument("--checkpoint_activations", action="store_true",
                   help="recompute each encoder layer's activations in the backward pass instead of storing them "
                        "(less memory, about one extra forward; same losses)")
    p.add_argument("--dist_timeout", type=float, default=600.0, metavar="SECONDS",
                   help="timeout of every collective: a rank waiting longer for its peers fails (default %(default)s)")
    p.add_argument("--seed", type=int, default=12345,
                   help="seed of the weight init, dropout and data order; a resumed run keeps its checkpoint's data "
                        "order (default %(default)s)")
    p.add_argument("--vocab", metavar="FILE", default=None,
                   help="vocab.txt the shards were built with: shards holding ids >= its size are refused, "
                        "a preset model takes its size as vocab_size, and it is copied into the HF export")
    p.add_argument("--pipeline_stages", type=int, default=1, metavar="N",
                   help="split the model into N pipeline stages (deepspeed.pipe); the ranks are N stages x "
                        "world_size/N data-parallel replicas (default %(default)s: no pipeline)")
    p.add_argument("--local_rank", type=int, default=None,
                   help="set by the deepspeed launcher; ignored (the LOCAL_RANK environment variable is used)")
    return p


@dataclass
class Run:
    """Everything checked before training starts (on every rank, without collectives)."""

    args: argparse.Namespace
    placement: Any  # bertperf.train.engine.Placement
    setup: Any  # bertperf.train.ds_config.TrainSetup
    config: Any  # bertperf.model.BertConfig
    dataset: Any  # bertperf.data.loader.ShardedLoader
    ckpt_dir: str
    resume_tag: str | None
    resume_state: dict[str, Any] | None
    init_from: str | None


SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size")


def _vocab_size(path: str) -> int:
    from bertperf.data.tokenize import load_vocab

    return max(load_vocab(path).values()) + 1


def resolve_model_config(spec: str, vocab: str | None) -> Any:
    """The BertConfig for `--model_config`; with `--vocab`, a preset takes the vocab's size and a
    config file must agree with it."""
    from bertperf.model.config import PRESETS, BertConfig

    config = BertConfig.resolve(spec)
    if vocab is None:
        return config
    size = _vocab_size(vocab)
    if size != config.vocab_size:
        if spec not in PRESETS:
            raise BertperfError(f"{spec}: vocab_size {config.vocab_size} differs from the {size} tokens of "
                                f"{vocab}; use the vocab the model was configured for")
        config = config.replace(vocab_size=size)
    return config


def _config_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_hf_dict(), sort_keys=True, default=str))


def check_args(args: argparse.Namespace) -> None:
    for name, low in (("max_steps", 1), ("log_every", 1), ("save_every", 0), ("pipeline_stages", 1),
                      ("keep_last", 0), ("max_bad_steps", 1)):
        if getattr(args, name) < low:
            raise BertperfError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if not args.dist_timeout > 0:
        raise BertperfError(f"--dist_timeout must be > 0 seconds, got {args.dist_timeout}")


def prepare_run(args: argparse.Namespace, placement: Any) -> Run:
    """Validate every input: DeepSpeed JSON, model config, vocab, shards, resume checkpoint."""
    from bertperf.data.loader import ShardedLoader
    from bertperf.data.shards import find_shards
    from bertperf.train.checkpoint import checkpoint_tags, find_resume_tag, latest_tag, read_trainer_state
    from bertperf.train.ds_config import load_train_setup

    check_args(args)
    setup = load_train_setup(args.deepspeed_config, placement.world_size, args.max_steps)
    config = resolve_model_config(args.model_config, args.vocab).replace(kernel_backend=args.kernel_backend)
    files = find_shards(args.data_dir)
    dataset = ShardedLoader(files, rank=placement.rank, world_size=placement.world_size,
                            micro_batch=setup.micro_batch, seed=args.seed, vocab_size=config.vocab_size)
    # every shard's metadata was checked when the loader opened them; check_all reads the first
    # shard this rank trains on in full (token ids within the vocab); the others at first load
    dataset.check_all()
    if dataset.seq_length > config.max_position_embeddings:
        raise BertperfError(f"{files[0]}: sequence length {dataset.seq_length} exceeds the model's "
                            f"max_position_embeddings {config.max_position_embeddings} ({args.model_config})")
    if dataset.num_samples < setup.micro_batch * placement.world_size:
        raise BertperfError(f"{args.data_dir}: {dataset.num_samples} instances are fewer than one batch of "
                            f"{setup.micro_batch} x {placement.world_size} ranks; create more data")

    ckpt_dir = os.path.join(args.output_dir, "checkpoints")
    state = None
    if args.resume:
        tag = find_resume_tag(ckpt_dir)
        if tag is None:
            raise BertperfError(f"{ckpt_dir}: --resume given but there is no checkpoint here (no 'latest' file); "
                                "run without --resume to start")
        state = read_trainer_state(ckpt_dir, tag)
        saved = state["model_config"]
        diff = [f for f in SHAPE_FIELDS if saved.get(f) != getattr(config, f)]
        if diff:
            raise BertperfError(f"{os.path.join(ckpt_dir, tag)}: the checkpoint's model has "
                                f"{', '.join(f'{f}={saved.get(f)}' for f in diff)}, unlike --model_config "
                                f"{args.model_config}; resume with the same model")
    else:
        tag = None
        existing = latest_tag(ckpt_dir) or (checkpoint_tags(ckpt_dir) or [None])[-1]
        if existing is not None:
            # a fresh run would mix its checkpoints with these (and --keep_last would prune by step)
            raise BertperfError(f"{ckpt_dir} holds checkpoints of an earlier run (latest {existing}): continue it "
                                "with --resume, or remove that directory (or choose another --output_dir) to start over")
    init_from = None
    if args.init_from and not args.resume:
        init_from = resolve_init_from(args.init_from, config, args.model_config)
    elif args.init_from and placement.is_main:
        log.info("--resume: the checkpoint's weights are used, not --init_from %s", args.init_from)
    return Run(args, placement, setup, config, dataset, ckpt_dir, tag if args.resume else None, state, init_from)


def resolve_init_from(path: str, config: Any, model_spec: str) -> str:
    """The directory `--init_from` names, checked against the model config: a Hugging Face model
    directory (config.json) is returned as it is; a bertperf checkpoint (a run's OUTPUT_DIR, its
    checkpoints/ or one global_step<N>/) resolves to the tag directory to load."""
    from bertperf.model.config import BertConfig
    from bertperf.train.checkpoint import read_trainer_state, resolve_checkpoint

    if not os.path.isdir(path):
        raise BertperfError(f"{path}: --init_from needs a directory: a Hugging Face model (config.json and "
                            "model.safetensors, e.g. the hf/ of an earlier run) or a bertperf checkpoint")
    if os.path.isfile(os.path.join(path, "config.json")):
        init_cfg, resolved = BertConfig.resolve(path), path
    else:
        ckpt_dir, tag = resolve_checkpoint(path)
        init_cfg = BertConfig.from_dict(read_trainer_state(ckpt_dir, tag)["model_config"])
        resolved = os.path.join(ckpt_dir, tag)
    diff = [f for f in SHAPE_FIELDS if getattr(init_cfg, f) != getattr(config, f)]
    if diff:
        raise BertperfError(f"{resolved}: the model's {', '.join(f'{f}={getattr(init_cfg, f)}' for f in diff)} "
                            f"differ from --model_config {model_spec}; use a matching model config")
    return resolved


def load_init_weights(init_from: str) -> dict[str, Any]:
    """The fp32 `BertForPreTraining` state dict of a directory `resolve_init_from` returned (an HF
    directory, or a checkpoint tag directory consolidated on this process); for the pipeline too."""
    from bertperf.model import BertForPreTraining
    from bertperf.train.checkpoint import consolidate_fp32, load_weights

    if os.path.isfile(os.path.join(init_from, "config.json")):
        return BertForPreTraining.from_pretrained(init_from).state_dict()
    config, weights = consolidate_fp32(os.path.dirname(init_from), os.path.basename(init_from))
    model = BertForPreTraining(config)
    load_weights(model, weights)
    return model.state_dict()


def configure_logging(placement: Any) -> None:
    """bertperf's INFO logs on rank 0 go to stdout; other ranks and other libraries log warnings only."""
    handler = logging.StreamHandler(sys.stdout)
    if placement.is_main:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    else:
        handler.setFormatter(logging.Formatter(f"[rank {placement.rank}] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("bertperf").setLevel(logging.INFO if placement.is_main else logging.WARNING)


@contextlib.contextmanager
def collective_failures(peers: Any, reporting: list[bool]) -> Iterator[None]:
    """Turn the error of a collective whose peer died (or timed out) into a `RankFailure` naming
    the lost rank(s); other errors pass unchanged. `reporting[0]` is set meanwhile, so the SIGTERM
    report of `bertperf.train.faults` does not print a second message."""
    from bertperf.train import faults

    try:
        yield
    except RuntimeError as e:
        if len(peers.pids) == 1 or not faults.is_collective_failure(e):
            raise
        reporting[0] = True
        raise faults.RankFailure(faults.failure_message(peers, faults.short_cause(e))) from None


def train(run: Run) -> int:
    """Build model, optimizer and engine; train to --max_steps; checkpoint, export, summarize."""
    if run.args.pipeline_stages > 1:
        from bertperf.train.pipeline import train_pipeline

        return train_pipeline(run)
    import torch

    from bertperf.model import BertForPreTraining
    from bertperf.report.flops import pretrain_flops_per_sequence
    from bertperf.train import checkpoint as ckpt
    from bertperf.train import engine as eng
    from bertperf.train import faults
    from bertperf.train.metrics import MetricsSinks, MetricsWindow, run_summary, throughput, window_row, write_summary
    from bertperf.train.optimizers import build_optimizer

    args, placement, setup, config = run.args, run.placement, run.setup, run.config
    threads = eng.set_threads(placement)
    eng.quiet_deepspeed()
    eng.init_distributed(args.dist_timeout)
    peers = faults.PeerTable.gather(placement.rank, placement.world_size)
    reporting = [False]  # set while this rank reports a failure it caught (the SIGTERM report stays quiet)
    if placement.world_size > 1:
        faults.install_sigterm_report(peers, PROG, busy=lambda: reporting[0])
    bad_loss = faults.injected_bad_losses(placement.rank)

    torch.manual_seed(args.seed)
    model = BertForPreTraining(config)
    if run.init_from:
        model.load_state_dict(load_init_weights(run.init_from))
        log.info("starting from the weights in %s", run.init_from)
    if args.checkpoint_activations:
        from bertperf.train.activation_checkpoint import checkpoint_encoder_layers

        log.info("activation checkpointing: %d encoder layers recompute their activations in the backward pass",
                 checkpoint_encoder_layers(model))
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them
    optimizer = build_optimizer(model, setup.optimizer, setup.path)
    gate = faults.StepGate(optimizer)
    scheduler = gate.scheduler(setup.schedule.lr_scheduler(optimizer)) if setup.schedule else None
    engine = eng.initialize(model, optimizer, scheduler, setup.ds_config)

    loader = run.dataset
    seed, samples, step, skipped = args.seed, 0, 0, 0
    if run.resume_tag is not None:
        state = ckpt.load_checkpoint(engine, run.ckpt_dir, run.resume_tag, placement.rank)
        step, samples, skipped = int(state["step"]), int(state["samples"]), int(state.get("skipped_steps", 0))
        # the loader's position (checkpoints from before ShardedLoader hold only epoch/offset there)
        loader.load_state_dict({**state["sampler"], "seed": int(state["seed"])})
        if int(state["seed"]) != seed:
            log.warning("resuming with the checkpoint's data order (seed %s), not --seed %s", state["seed"], seed)
            seed = int(state["seed"])
        if engine.global_steps != step:
            raise BertperfError(f"{os.path.join(run.ckpt_dir, run.resume_tag)}: DeepSpeed restored step "
                                f"{engine.global_steps} but bertperf's state says {step}; the checkpoint is inconsistent")
        log.info("resumed from %s: step %d, %d samples seen, data epoch %d offset %d", run.resume_tag, step,
                 samples, loader.epoch, loader.offset)
    if step >= args.max_steps:
        log.info("the checkpoint is at step %d, which already reaches --max_steps %d: nothing to do", step, args.max_steps)
        return 0

    # ShardedLoader draws from its own seeded generators, never from the global RNG (dropout)
    batches = iter(loader)
    sinks = MetricsSinks(args.output_dir, placement.is_main, args.max_steps,
                         resume_step=step if run.resume_tag is not None else None)

    def flops_per_seq(masked: float) -> float:
        return pretrain_flops_per_sequence(config, loader.seq_length, masked)

    def trainer_state() -> dict[str, Any]:
        # the loader's position after the last micro batch taken (epoch, offset, seed, num_samples), the same
        # on every rank; kept under the key "sampler" that checkpoint.read_trainer_state requires
        return {"step": step, "samples": samples, "sampler": loader.state_dict(), "seed": seed,
                "world_size": placement.world_size, "global_batch": setup.global_batch,
                "model_config": _config_dict(config), "data_dir": os.path.abspath(args.data_dir),
                "zero_stage": setup.zero_stage, "bf16": setup.bf16, "skipped_steps": guard.skipped_total}

    log.info("training %s (%.1fM params) on %d ranks x %d threads: ZeRO-%d, %s, micro batch %d x %d accumulation "
             "= %d sequences/step, %d instances of length %d; steps %d -> %d",
             args.model_config, n_params / 1e6, placement.world_size, threads,
             setup.zero_stage, "bf16" if setup.bf16 else "fp32", setup.micro_batch, setup.grad_accum,
             setup.global_batch, loader.num_samples, loader.seq_length, step, args.max_steps)
    from bertperf.utils.malloc import describe

    log.info("%s", describe())

    guard = faults.NonFiniteGuard(args.max_bad_steps, placement.world_size, skipped)
    engine.train()
    window = MetricsWindow()
    first_step = step
    t_start = t_window = time.perf_counter()
    t_after_first = t_start
    seqs_after_first = 0
    masked_total = seqs_total = 0.0
    first_row = last_row = None
    with collective_failures(peers, reporting):
        while step < args.max_steps:
            for micro in range(setup.grad_accum):
                out = engine(**next(batches))
                if micro == 0 and step + 1 in bad_loss:  # test-only fault injection (bertperf.train.faults)
                    out.loss = out.loss * bad_loss[step + 1]
                guard.observe(out.loss)
                engine.backward(out.loss)
                if micro == setup.grad_accum - 1:
                    gate.skip = guard.step_is_bad(step + 1)  # collective: the same decision on every rank
                engine.step()
                window.add(out, setup.micro_batch)
            gate.skip = False
            step += 1
            samples += setup.global_batch
            if step == first_step + 1:
                t_after_first = time.perf_counter()  # the first step pays for lazy initialization
            else:
                seqs_after_first += setup.global_batch
            if step % args.log_every == 0 or step == args.max_steps:
                sums = window.reduce()
                now = time.perf_counter()
                row = window_row(sums, step=step, epoch=loader.epoch, samples=samples, lr=engine.get_lr()[0],
                                 seconds=now - t_window, flops_per_masked=flops_per_seq, elapsed=now - t_start,
                                 skipped=guard.skipped_total)
                t_window = now
                sinks.write(row)
                first_row, last_row = first_row or row, row
                masked_total += sums["mlm_count"]
                seqs_total += sums["sequences"]
            if args.save_every and step % args.save_every == 0 and step != args.max_steps:
                tag = ckpt.save_checkpoint(engine, run.ckpt_dir, step, trainer_state(), placement.rank, args.keep_last)
                log.info("saved checkpoint %s", os.path.join(run.ckpt_dir, tag))
        t_end = time.perf_counter()
        sinks.close()
        tag = ckpt.save_checkpoint(engine, run.ckpt_dir, step, trainer_state(), placement.rank, args.keep_last)
    ckpt_path = os.path.join(run.ckpt_dir, tag)
    hf_dir = os.path.join(args.output_dir, "hf")
    if placement.is_main:
        log.info("saved checkpoint %s", ckpt_path)
        weights = ckpt.fp32_state_dict(engine, run.ckpt_dir, tag, setup.zero_stage, setup.bf16)
        ckpt.export_hf(BertForPreTraining, config, weights, hf_dir, args.vocab)
        log.info("exported the model in Hugging Face layout to %s", hf_dir)
        seq_per_s = throughput(seqs_after_first, t_after_first, step - first_step, setup.global_batch,
                               t_start, t_end)
        summary = run_summary(
            first_step=first_step, step=step, samples=samples, seconds=t_end - t_start, seq_per_s=seq_per_s,
            flops_per_sequence=flops_per_seq(masked_total / seqs_total if seqs_total else 0.0),
            first_row=first_row, last_row=last_row,
            paths={"checkpoint": ckpt_path, "hf": hf_dir, "metrics_csv": sinks.csv_path,
                   "tensorboard": sinks.tb_dir, "data_dir": args.data_dir},
            world_size=placement.world_size, threads_per_rank=threads, zero_stage=setup.zero_stage, bf16=setup.bf16,
            global_batch=setup.global_batch, seq_length=loader.seq_length, model_config=args.model_config,
            log_every=args.log_every, skipped_steps=guard.skipped_total)
        write_summary(args.output_dir, summary)
        log.info("done: steps %d -> %d in %.1f s; %.1f seq/s, %.4f TFLOP/s after the first step; loss %.4f -> %.4f%s",
                 first_step, step, t_end - t_start, seq_per_s, summary["tflops"], first_row.loss, last_row.loss,
                 f"; {guard.skipped_total} steps skipped for a NaN/Inf loss" if guard.skipped_total else "")
    with collective_failures(peers, reporting):
        eng.shutdown_distributed()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bertperf.train.engine import detect_placement

    placement = detect_placement()
    configure_logging(placement)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        run = prepare_run(args, placement)
    except BertperfError:
        if not placement.is_main:
            return EXIT_USER_ERROR  # every rank checks the same inputs; rank 0 reports the error once
        raise
    os.makedirs(args.output_dir, exist_ok=True)
    from bertperf.train.faults import RankFailure, TooManyBadSteps

    try:
        return train(run)
    except TooManyBadSteps:
        if not placement.is_main:
            return EXIT_USER_ERROR  # decided on every rank alike; rank 0 reports it
        raise
    except RankFailure as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_RANK_FAILURE


if __name__ == "__main__":
    from bertperf.train.engine import end_process_after_distributed_run

    _code = run_cli(lambda: main(), prog=PROG)
    # after a distributed run every rank ends without interpreter teardown, where gloo's threads
    # could abort it (end_process_after_distributed_run says why)
    end_process_after_distributed_run(_code)
    sys.exit(_code)
