"""The pipeline form of BERT pre-training (bertperf.model.pipeline) against BertForPreTraining.

One process (a gloo world of one, one pipeline stage): the pipe module, loaded with the weights of
a `BertForPreTraining`, computes the same loss and the same gradients on the same batch; the
state-dict mapping is a bijection; the layout checks and the stage partitions are right.
The multi-stage runs (2 ranks) are in tests/train/test_pipeline.py.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from bertperf.model import BertConfig, BertForPreTraining
from bertperf.model.pipeline import (
    PretrainingLoss,
    build_pipeline_module,
    check_pipeline_layout,
    load_pretraining_weights,
    pipe_to_pretraining,
    pretraining_to_pipe,
    stage_partition,
)
from bertperf.utils.errors import BertperfError
from tests.model.conftest import perturb_, random_batch, random_positions


@pytest.fixture(scope="module")
def world_of_one():
    """A gloo process group of one rank (PipelineModule needs torch.distributed), torn down after."""
    if dist.is_initialized():
        yield
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import deepspeed

    saved = {k: os.environ.get(k) for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    try:
        yield
    finally:
        dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def small_config(layers: int) -> BertConfig:
    return BertConfig.preset("tiny", vocab_size=517, hidden_size=48, num_attention_heads=4, intermediate_size=80,
                             num_hidden_layers=layers, max_position_embeddings=64,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_batch(config: BertConfig, seed: int, b: int, s: int, p: int, counts: list[int]):
    gen = torch.Generator().manual_seed(seed)
    lengths = [s - 3 * i for i in range(b)]  # right padding of different lengths
    ids, seg, mask = random_batch(gen, b, s, config.vocab_size, lengths)
    pos = random_positions(gen, lengths, p, counts)
    mlm_ids = torch.where(pos > 0, torch.randint(1, config.vocab_size, pos.shape, generator=gen), 0)
    nsp = torch.randint(0, 2, (b,), generator=gen)
    return ids, seg, mask, pos, mlm_ids, nsp


@pytest.mark.parametrize("layers,b,s,p,counts", [
    (1, 3, 17, 5, [5, 2, 0]),      # one row without any masked token
    (3, 2, 33, 7, [7, 4]),
    (2, 1, 9, 3, [0]),             # no masked token at all: MLM loss 0, graph still connected
])
def test_pipe_loss_and_grads_equal_bert_for_pretraining(world_of_one, layers, b, s, p, counts):
    config = small_config(layers)
    torch.manual_seed(0)
    ref = BertForPreTraining(config)
    perturb_(ref, seed=layers)
    ref.tie_weights()
    ids, seg, mask, pos, mlm_ids, nsp = make_batch(config, 10 + layers, b, s, p, counts)

    loss_fn = PretrainingLoss()
    pipe = build_pipeline_module(config, num_stages=1, loss_fn=loss_fn)
    load_pretraining_weights(pipe, ref.state_dict(), layers)
    assert not [n for n, q in pipe.named_parameters() if not q.requires_grad]  # one stage: nothing frozen

    out = ref(ids, seg, mask, pos, mlm_ids, nsp)
    out.loss.backward()
    loss = loss_fn(pipe((ids, seg, mask, pos)), (pos, mlm_ids, nsp))
    loss.backward()

    # the same ops in the same order: equal to float32 rounding
    torch.testing.assert_close(loss, out.loss, rtol=1e-6, atol=1e-6)
    rec, = loss_fn.pop_records()
    assert loss_fn.records == []
    torch.testing.assert_close(rec.mlm_loss, out.mlm_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rec.nsp_loss, out.nsp_loss, rtol=1e-6, atol=1e-6)
    assert int(rec.mlm_count) == int(out.mlm_count) == sum(counts)
    assert int(rec.mlm_correct) == int(out.mlm_correct) and int(rec.nsp_correct) == int(out.nsp_correct)

    ref_grads = {n: q.grad for n, q in ref.named_parameters()}
    pipe_grads = pipe_to_pretraining({n: q.grad for n, q in pipe.named_parameters()}, layers)
    assert set(ref_grads) <= set(pipe_grads)
    for name, g in ref_grads.items():
        if g is None:  # position rows beyond S, etc. still get a zero grad tensor in both
            assert pipe_grads[name] is None, name
            continue
        torch.testing.assert_close(pipe_grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
    # the decoder is the word embedding in the pipe module too (one parameter)
    tied = pipe.tied_modules["bert"]
    assert tied.mlm.decoder.weight is tied.embeddings.word.weight


def test_state_dict_mapping_round_trip(world_of_one):
    config = small_config(3)
    torch.manual_seed(1)
    ref = BertForPreTraining(config)
    perturb_(ref, seed=5)
    ref.tie_weights()
    sd = ref.state_dict()
    mapped = pretraining_to_pipe(sd, 3)
    pipe = build_pipeline_module(config, num_stages=1)
    assert set(mapped) == set(pipe.state_dict())
    load_pretraining_weights(pipe, sd, 3)
    for key, value in pipe.state_dict().items():
        assert torch.equal(value, mapped[key]), key
    back = pipe_to_pretraining(pipe.state_dict(), 3)
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert torch.equal(back[key], value), key
    # a state dict holding the tied weight under one name only maps as well
    only_decoder = {k: v for k, v in sd.items() if k != "bert.embeddings.word.weight"}
    assert torch.equal(pretraining_to_pipe(only_decoder, 3)["tied_modules.bert.embeddings.word.weight"],
                       sd["mlm.decoder.weight"])
    with pytest.raises(BertperfError, match="bert.layers.3"):
        pretraining_to_pipe({**sd, "bert.layers.3.qkv.weight": sd["bert.layers.0.qkv.weight"]}, 3)


@pytest.mark.parametrize("layers", [1, 2, 4, 12, 24])
def test_stage_partitions_are_non_empty_with_ends_on_first_and_last_stage(layers):
    config = small_config(layers)
    n = layers + 2
    for stages in range(1, n + 1):
        parts = stage_partition(config, stages)
        assert len(parts) == stages + 1 and parts[0] == 0 and parts[-1] == n
        assert all(a < b for a, b in zip(parts, parts[1:])), (stages, parts)
        if stages <= layers:  # balanced by encoder layers: sizes differ by at most one
            sizes = [min(b, layers + 1) - max(a, 1) for a, b in zip(parts, parts[1:])]
            assert max(sizes) - min(sizes) <= 1, (stages, parts)


def test_layout_checks():
    config = small_config(2)
    assert check_pipeline_layout(config, 2, 4, 1, "ds.json") == 2
    assert check_pipeline_layout(config, 4, 4, 0, "ds.json") == 1
    for zero in (2, 3):
        with pytest.raises(BertperfError) as e:
            check_pipeline_layout(config, 2, 2, zero, "ds.json")
        msg = str(e.value)
        assert msg.startswith("ds.json:") and f"stage {zero}" in msg and "stage\": 1} (or 0)" in msg, msg
    with pytest.raises(BertperfError, match="does not divide the 3 ranks"):
        check_pipeline_layout(config, 2, 3, 0, "ds.json")
    with pytest.raises(BertperfError, match="more than the 4 pipeline layers"):
        check_pipeline_layout(config, 5, 5, 0, "ds.json")
