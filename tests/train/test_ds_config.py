"""Reading DeepSpeed JSONs: batch resolution, what bertperf takes over, the optimizer table, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bertperf.optim.schedules import WarmupDecaySchedule
from bertperf.train.ds_config import load_train_setup, resolve_batch
from bertperf.train.optimizers import build_optimizer
from bertperf.utils.errors import BertperfError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, cfg: dict) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("cfg,world,expected", [
    ({"train_micro_batch_size_per_gpu": 8}, 2, (8, 1, 16)),
    ({"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 3}, 2, (8, 3, 48)),
    ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}, 2, (8, 4, 64)),
    ({"train_batch_size": 64, "gradient_accumulation_steps": 2}, 4, (8, 2, 64)),
    ({"train_batch_size": 12}, 3, (4, 1, 12)),
    ({"train_batch_size": 48, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 3}, 2, (8, 3, 48)),
])
def test_resolve_batch(cfg, world, expected):
    assert resolve_batch(cfg, world, "f.json") == expected


@pytest.mark.parametrize("cfg,needle", [
    ({}, "train_micro_batch_size_per_gpu"),
    ({"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4}, "not divisible"),
    ({"train_batch_size": 40, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, "!="),
    ({"train_micro_batch_size_per_gpu": 0}, "positive integer"),
    ({"train_micro_batch_size_per_gpu": 2.5}, "positive integer"),
])
def test_resolve_batch_errors(cfg, needle):
    with pytest.raises(BertperfError, match=needle) as e:
        resolve_batch(cfg, 2, "f.json")
    assert str(e.value).startswith("f.json: ")


def test_takeover_leaves_the_rest_to_deepspeed(tmp_path):
    cfg = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2, "overlap_comm": False},
           "bf16": {"enabled": True}, "gradient_clipping": 1.0,
           "optimizer": {"type": "AdamW", "params": {"lr": 2e-4}},
           "scheduler": {"type": "WarmupPolyDecay", "params": {"warmup_num_steps": 5}}}
    setup = load_train_setup(write(tmp_path, cfg), world_size=2, max_steps=50)
    assert "optimizer" not in setup.ds_config and "scheduler" not in setup.ds_config
    assert setup.ds_config["zero_optimization"] == cfg["zero_optimization"]
    assert setup.ds_config["bf16"] == {"enabled": True} and setup.ds_config["gradient_clipping"] == 1.0
    assert (setup.ds_config["train_batch_size"], setup.ds_config["gradient_accumulation_steps"]) == (8, 1)
    assert setup.schedule == WarmupDecaySchedule(total_steps=50, warmup_steps=5, decay="poly", power=0.5)
    assert (setup.zero_stage, setup.bf16, setup.global_batch) == (2, True, 8)
    assert "zero_allow_untested_optimizer" not in setup.ds_config


def test_deepspeed_scheduler_types_stay(tmp_path):
    cfg = {"train_micro_batch_size_per_gpu": 4, "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 3}}}
    setup = load_train_setup(write(tmp_path, cfg), 1, 10)
    assert setup.schedule is None and setup.ds_config["scheduler"] == cfg["scheduler"]


def test_lamb_under_zero_is_allowed(tmp_path):
    cfg = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 1},
           "optimizer": {"type": "Lamb", "params": {"lr": 1e-3}}}
    assert load_train_setup(write(tmp_path, cfg), 1, 10).ds_config["zero_allow_untested_optimizer"] is True


@pytest.mark.parametrize("cfg,needle", [
    ({"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "Adagrad"}}, "optimizer.type 'Adagrad'"),
    ({"train_micro_batch_size_per_gpu": 4, "scheduler": {"type": "Cosine"}}, "scheduler.type 'Cosine'"),
    ({"train_micro_batch_size_per_gpu": 4, "fp16": {"enabled": True}}, "fp16"),
    ({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 4}}, "zero_optimization.stage"),
])
def test_config_errors_name_the_file(tmp_path, cfg, needle):
    path = write(tmp_path, cfg)
    with pytest.raises(BertperfError, match=needle) as e:
        load_train_setup(path, 1, 10)
    assert str(e.value).startswith(path)


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(BertperfError, match="not found"):
        load_train_setup(str(tmp_path / "nope.json"), 1, 10)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,,}')
    with pytest.raises(BertperfError, match=r"bad.json: not valid JSON \(line 1"):
        load_train_setup(str(bad), 1, 10)


@pytest.mark.parametrize("name,world,micro,accum", [
    ("ds-demo.json", 2, 32, 1), ("ds-phase1.json", 2, 64, 512), ("ds-phase1.json", 8, 64, 128),
    ("ds-phase2.json", 2, 16, 1024),
])
def test_bundled_configs(name, world, micro, accum):
    setup = load_train_setup(str(REPO / "configs" / name), world, max_steps=300)
    assert (setup.micro_batch, setup.grad_accum) == (micro, accum)
    assert setup.schedule is not None


def test_phase_configs_follow_nvidia_recipe():
    p1 = load_train_setup(str(REPO / "configs" / "ds-phase1.json"), 8, max_steps=1)
    p2 = load_train_setup(str(REPO / "configs" / "ds-phase2.json"), 8, max_steps=1)
    assert (p1.global_batch, p1.optimizer["params"]["lr"], p1.schedule.total_steps) == (65536, 6e-3, 7038)
    assert p1.schedule.warmup_steps == round(0.2843 * 7038) and p1.schedule.power == 0.5
    assert (p2.global_batch, p2.optimizer["params"]["lr"], p2.schedule.total_steps) == (32768, 4e-3, 1563)
    assert p2.schedule.warmup_steps == round(0.128 * 1563)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)


@pytest.mark.parametrize("section,cls", [
    ({"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.8, 0.9], "weight_decay": 0.1}}, torch.optim.AdamW),
    ({"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}, torch.optim.AdamW),
    ({"type": "Adam", "params": {"lr": 1e-3, "adam_w_mode": False}}, torch.optim.Adam),
    ({"type": "lamb", "params": {"lr": 1e-3, "max_grad_norm": 1.0}}, None),
])
def test_optimizer_table(section, cls):
    from bertperf.optim.lamb import Lamb

    model = Tiny()
    opt = build_optimizer(model, section, "f.json")
    assert type(opt) is (cls or Lamb)
    groups = {tuple(id(p) for p in g["params"]): g for g in opt.param_groups}
    decayed = groups[(id(model.lin.weight),)]
    assert decayed["weight_decay"] == section["params"].get("weight_decay", 0.0)
    plain = groups[tuple(id(p) for p in (model.lin.bias, model.norm.weight, model.norm.bias))]
    assert plain["weight_decay"] == 0.0
    if cls is not None:
        assert "layer_adaptation" not in decayed
    if section["params"].get("betas"):
        assert decayed["betas"] == (0.8, 0.9)


def test_optimizer_unknown_param():
    with pytest.raises(BertperfError, match=r"f.json: optimizer.params \['momentum'\] are not accepted by AdamW"):
        build_optimizer(Tiny(), {"type": "AdamW", "params": {"momentum": 0.9}}, "f.json")
