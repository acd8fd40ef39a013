"""Pre-training with pipeline parallelism (`pretrain.py --pipeline_stages N`, N > 1).

The model is `bertperf.model.pipeline.build_pipeline_module` (embeddings, encoder layers and heads
as DeepSpeed layer specs, the word embedding tied to the MLM decoder), trained with DeepSpeed's
pipeline engine (`engine.train_batch`). The world's ranks form N stages x D = world_size / N
data-parallel replicas.

What differs from the data-parallel path of `bertperf.pretrain.train`:
- Batch sizes: the DeepSpeed JSON's batch fields are resolved for the D replicas (not for all
  ranks): global batch = micro batch x gradient_accumulation_steps x D. The pipeline runs the
  accumulation steps as its micro-batches; more micro-batches keep more stages busy.
- ZeRO stage 0 or 1 only (DeepSpeed refuses ZeRO-2/3 with a pipeline): checked before the first step.
- Data order: replica d's micro-batch k of a step is what rank d * A + k (A = accumulation steps)
  of a data-parallel run with D x A ranks and no accumulation reads. So a pipeline run on 2 ranks
  (2 stages, 2 micro-batches) sees exactly the micro-batches of a 2-rank data-parallel run with
  micro batch and accumulation 1, and from the same weights gives the same losses.
- Initial weights: `BertForPreTraining(config)` built with --seed (or --init_from) on every rank,
  mapped into the stage's layers, so a pipeline run starts from the weights a data-parallel run
  with the same seed starts from. Dropout masks differ from a data-parallel run.
- Metrics: loss, MLM/NSP losses and accuracies, as in the data-parallel path: the last stage's
  loss function records them per micro-batch and the window's all-reduce over all ranks sums them
  (the other stages add zeros). Not supported here: skipping steps whose loss is NaN/Inf
  (`--max_bad_steps`): a non-finite logged loss stops the run with an error.
- Checkpoints: DeepSpeed's pipeline layout (one `layer_NN-model_states.pt` per layer), written with
  `bertperf.train.checkpoint.save_checkpoint`, resumable with --resume on the same number of
  stages; rank 0 exports hf/ from the layer files (`pipeline_checkpoint_weights`). In a bf16 run the
  layer files and so the export hold the bf16 module weights, not the fp32 masters.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Iterator

import torch

from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
PIPE_BATCH = tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]


def pipeline_setup(run: Any) -> tuple[Any, int]:
    """(TrainSetup resolved for the data-parallel degree D, D), after every pipeline check.

    BertperfError for ZeRO-2/3, a world size not divisible by the stages, more stages than layers,
    and a --resume checkpoint made with another number of stages or without a pipeline."""
    from bertperf.model.pipeline import check_pipeline_layout, is_pipeline_checkpoint
    from bertperf.train.ds_config import load_train_setup

    args, placement = run.args, run.placement
    stages = args.pipeline_stages
    dp = check_pipeline_layout(run.config, stages, placement.world_size, run.setup.zero_stage, run.setup.path)
    setup = load_train_setup(run.setup.path, dp, args.max_steps)
    if run.resume_tag is not None:
        tag_dir = os.path.join(run.ckpt_dir, run.resume_tag)
        saved = int((run.resume_state or {}).get("pipeline_stages", 1))
        if not is_pipeline_checkpoint(tag_dir) or saved != stages:
            raise BertperfError(f"{tag_dir}: this checkpoint was written with {saved} pipeline stage(s), not "
                                f"--pipeline_stages {stages}; resume with the same stages, or start a new run from "
                                "its weights with --init_from")
    return setup, dp


def pipe_batch(batch: dict[str, torch.Tensor]) -> PIPE_BATCH:
    """A loader batch (dict of int64 [B, ...]) as the pipe engine's (inputs, labels)."""
    return ((batch["input_ids"], batch["segment_ids"], batch["input_mask"], batch["masked_lm_positions"]),
            (batch["masked_lm_positions"], batch["masked_lm_ids"], batch["next_sentence_labels"]))


class MicroBatches:
    """The micro-batch stream of one data-parallel replica (see the module docstring: replica d's
    micro-batch k of each step comes from virtual rank d * A + k of D * A).

    `loader` is the run's `bertperf.data.loader.ShardedLoader` (its files and vocab size are used):
    one streaming loader per virtual rank, so a data-loading stage holds about A shards.
    Iterating yields (inputs, labels) tuples forever; `state_after(steps)` is the global data
    position after that many more steps (arithmetic: also right on stages that load no data)."""

    def __init__(self, loader: Any, micro_batch: int, accum: int, dp_rank: int, dp: int, seed: int,
                 state: Any) -> None:
        from bertperf.data.loader import ShardedLoader

        self.world = dp * accum
        self.micro_batch = micro_batch
        start = {**state.to_dict(), "seed": seed}
        self.loaders = [ShardedLoader(loader.files, rank=dp_rank * accum + k, world_size=self.world,
                                      micro_batch=micro_batch, seed=seed, vocab_size=loader.vocab_size, state=start)
                        for k in range(accum)]

    def __iter__(self) -> Iterator[PIPE_BATCH]:
        iterators = [iter(ld) for ld in self.loaders]
        while True:
            for it in iterators:
                yield pipe_batch(next(it))

    def state_after(self, state: Any, steps: int) -> Any:
        from bertperf.train.sampler import SamplerState

        moved = self.loaders[0].advance({**state.to_dict(), "seed": self.loaders[0].seed}, batches=steps)
        return SamplerState(epoch=moved["epoch"], offset=moved["offset"])


def initial_weights(run: Any) -> dict[str, torch.Tensor]:
    """The `BertForPreTraining` state dict every stage starts from: --init_from's weights, or a fresh
    model built after torch.manual_seed(--seed), as the data-parallel path builds it."""
    from bertperf.model import BertForPreTraining
    from bertperf.model.pipeline import is_pipeline_checkpoint, pipeline_checkpoint_weights

    torch.manual_seed(run.args.seed)
    model = BertForPreTraining(run.config)
    if run.init_from:
        if is_pipeline_checkpoint(run.init_from):
            weights = pipeline_checkpoint_weights(run.init_from, run.config.num_hidden_layers)
        else:
            from bertperf.pretrain import load_init_weights

            weights = load_init_weights(run.init_from)
        model.load_state_dict(weights)
        log.info("starting from the weights in %s", run.init_from)
    return model.state_dict()


def train_pipeline(run: Any) -> int:
    """Train `run` (a `bertperf.pretrain.Run`) with `--pipeline_stages` > 1 stages; returns 0.

    Collective: every rank calls it. Input errors raise BertperfError on rank 0 (exit code 2 on
    the others) before anything is initialized."""
    from bertperf.model.pipeline import (PretrainingLoss, build_pipeline_module, load_pretraining_weights,
                                         pipeline_checkpoint_weights, stage_partition)
    from bertperf.report.flops import pretrain_flops_per_sequence
    from bertperf.train import checkpoint as ckpt
    from bertperf.train import engine as eng
    from bertperf.train import faults
    from bertperf.train.metrics import MetricsSinks, MetricsWindow, run_summary, throughput, window_row, write_summary
    from bertperf.train.optimizers import build_optimizer
    from bertperf.train.sampler import SamplerState

    args, placement, config = run.args, run.placement, run.config
    try:
        setup, dp = pipeline_setup(run)
    except BertperfError:
        if not placement.is_main:
            return EXIT_USER_ERROR  # every rank checks the same inputs; rank 0 reports the error once
        raise
    stages, layers = args.pipeline_stages, config.num_hidden_layers
    threads = eng.set_threads(placement)
    eng.quiet_deepspeed()
    eng.init_distributed(args.dist_timeout)
    peers = faults.PeerTable.gather(placement.rank, placement.world_size)
    faults.install_sigterm_report(peers, "pretrain.py", busy=lambda: False)

    weights = initial_weights(run)
    loss_fn = PretrainingLoss()
    module = build_pipeline_module(config, stages, loss_fn,
                                   activation_checkpoint_interval=1 if args.checkpoint_activations else 0)
    load_pretraining_weights(module, weights, layers)
    del weights
    n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    optimizer = build_optimizer(module, setup.optimizer, setup.path)
    scheduler = setup.schedule.lr_scheduler(optimizer) if setup.schedule else None
    engine = eng.initialize(module, optimizer, scheduler, setup.ds_config)
    dp_rank = engine.grid.data_parallel_id

    seed, sampler_state, samples, step = args.seed, SamplerState(), 0, 0
    if run.resume_tag is not None:
        state = ckpt.load_checkpoint(engine, run.ckpt_dir, run.resume_tag, placement.rank)
        step, samples = int(state["step"]), int(state["samples"])
        sampler_state = SamplerState.from_dict(state["sampler"])
        seed = int(state["seed"])
        if engine.global_steps != step:
            raise BertperfError(f"{os.path.join(run.ckpt_dir, run.resume_tag)}: DeepSpeed restored step "
                                f"{engine.global_steps} but bertperf's state says {step}; "
                                "the checkpoint is inconsistent")
        log.info("resumed from %s: step %d, %d samples seen, data epoch %d offset %d", run.resume_tag, step,
                 samples, sampler_state.epoch, sampler_state.offset)
    if step >= args.max_steps:
        log.info("the checkpoint is at step %d, which already reaches --max_steps %d: nothing to do",
                 step, args.max_steps)
        return 0

    dataset = run.dataset
    stream = MicroBatches(dataset, setup.micro_batch, setup.grad_accum, dp_rank, dp, seed, sampler_state)
    data_iter = iter(stream)
    sinks = MetricsSinks(args.output_dir, placement.is_main, args.max_steps,
                         resume_step=step if run.resume_tag is not None else None)

    def flops_per_seq(masked: float) -> float:
        return pretrain_flops_per_sequence(config, dataset.seq_length, masked)

    def trainer_state() -> dict[str, Any]:
        from bertperf.pretrain import _config_dict

        return {"step": step, "samples": samples, "sampler": sampler_state.to_dict(), "seed": seed,
                "world_size": placement.world_size, "global_batch": setup.global_batch,
                "model_config": _config_dict(config), "data_dir": os.path.abspath(args.data_dir),
                "zero_stage": setup.zero_stage, "bf16": setup.bf16, "skipped_steps": 0,
                "pipeline_stages": stages, "data_parallel": dp}

    log.info("training %s (%.1fM trainable params on this stage) on %d ranks = %d pipeline stages (layers %s) x %d "
             "data-parallel, %d threads each: ZeRO-%d, %s, micro batch %d x %d micro-batches x %d replicas = %d "
             "sequences/step, %d instances of length %d; steps %d -> %d",
             args.model_config, n_params / 1e6, placement.world_size, stages, stage_partition(config, stages), dp,
             threads, setup.zero_stage, "bf16" if setup.bf16 else "fp32", setup.micro_batch, setup.grad_accum, dp,
             setup.global_batch, dataset.num_samples, dataset.seq_length, step, args.max_steps)

    engine.train()
    window = MetricsWindow()
    first_step = step
    t_start = t_window = time.perf_counter()
    t_after_first, seqs_after_first = t_start, 0
    masked_total = seqs_total = 0.0
    first_row = last_row = None
    while step < args.max_steps:
        engine.train_batch(data_iter=data_iter)
        for record in loss_fn.pop_records():  # only the last stage has records
            window.add(record, setup.micro_batch)
        step += 1
        samples += setup.global_batch
        sampler_state = stream.state_after(sampler_state, 1)
        if step == first_step + 1:
            t_after_first = time.perf_counter()
        else:
            seqs_after_first += setup.global_batch
        if step % args.log_every == 0 or step == args.max_steps:
            sums = window.reduce()  # all ranks: the non-last stages add zeros
            now = time.perf_counter()
            row = window_row(sums, step=step, epoch=sampler_state.epoch, samples=samples, lr=engine.get_lr()[0],
                             seconds=now - t_window, flops_per_masked=flops_per_seq, elapsed=now - t_start)
            t_window = now
            if not math.isfinite(row.loss):
                raise BertperfError(f"{setup.path}: the loss became {row.loss} at step {step}; lower the learning "
                                    "rate or enable gradient_clipping (skipping bad steps is not supported with "
                                    "--pipeline_stages)")
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
        from bertperf.model import BertForPreTraining

        log.info("saved checkpoint %s", ckpt_path)
        if setup.bf16:
            log.warning("bf16 pipeline run: hf/ holds the bf16 module weights (the fp32 masters stay in the "
                        "optimizer states of the checkpoint)")
        ckpt.export_hf(BertForPreTraining, config, pipeline_checkpoint_weights(ckpt_path, layers), hf_dir, args.vocab)
        log.info("exported the model in Hugging Face layout to %s", hf_dir)
        seq_per_s = throughput(seqs_after_first, t_after_first, step - first_step, setup.global_batch,
                               t_start, t_end)
        summary = run_summary(
            first_step=first_step, step=step, samples=samples, seconds=t_end - t_start, seq_per_s=seq_per_s,
            flops_per_sequence=flops_per_seq(masked_total / seqs_total if seqs_total else 0.0),
            first_row=first_row, last_row=last_row,
            paths={"checkpoint": ckpt_path, "hf": hf_dir, "metrics_csv": sinks.csv_path,
                   "tensorboard": sinks.tb_dir, "data_dir": args.data_dir},
            world_size=placement.world_size, pipeline_stages=stages, data_parallel=dp,
            partition=stage_partition(config, stages), threads_per_rank=threads, zero_stage=setup.zero_stage,
            bf16=setup.bf16, global_batch=setup.global_batch, micro_batches=setup.grad_accum,
            seq_length=dataset.seq_length, model_config=args.model_config, log_every=args.log_every)
        write_summary(args.output_dir, summary)
        log.info("done: steps %d -> %d in %.1f s; %.1f seq/s, %.4f TFLOP/s after the first step; loss %.4f -> %.4f",
                 first_step, step, t_end - t_start, seq_per_s, summary["tflops"],
                 summary["loss_first"] or math.nan, summary["loss_last"] or math.nan)
    eng.shutdown_distributed()
    return 0
