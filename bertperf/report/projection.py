"""A GPU projection: what a BERT configuration's FLOP count allows on A100 and H100, next to the
published throughput of NVIDIA's and DeepSpeed's BERT.

The roofline figure is `peak dense bf16/fp16 tensor-core FLOP/s / training FLOPs per sequence`
(`bertperf.report.flops`: matmul FLOPs only, 3x forward, sparse MLM head): no implementation can
exceed it. The "at anchor MFU" figure scales it by the model FLOP utilisation that the published
anchor on the same GPU implies (its seq/s times BERT-Large's FLOPs per sequence, over the peak), so
it says what bertperf would reach on that GPU if it were exactly as efficient as that anchor. Both
are projections, not measurements: this project has no GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from bertperf.report.flops import pretrain_flops_per_sequence


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_tflops: float  # dense bf16/fp16 tensor-core peak (no sparsity), from the vendor's data sheet


@dataclass(frozen=True)
class Anchor:
    """A published BERT-Large pre-training throughput per GPU."""

    source: str
    gpu: str
    seq_len: int
    seq_per_s: float


GPUS = {
    "V100": Gpu("V100 SXM2 (fp16)", 125.0),
    "A100": Gpu("A100 SXM (bf16)", 312.0),
    "H100": Gpu("H100 SXM (bf16)", 989.4),
}

# per GPU, BERT-Large, mixed precision (REFERENCE.md "Anchors")
ANCHORS = (
    Anchor("NVIDIA DeepLearningExamples", "A100", 128, 580.0),
    Anchor("NVIDIA DeepLearningExamples", "A100", 512, 210.0),
    Anchor("NVIDIA DeepLearningExamples", "V100", 128, 224.0),
    Anchor("NVIDIA DeepLearningExamples", "V100", 512, 75.0),
    Anchor("DeepSpeed", "V100", 128, 272.0),
    Anchor("DeepSpeed", "V100", 512, 52.0),
)

# the masked-token budget of NVIDIA's recipe per phase
MASKED_PER_SEQ = {128: 20, 512: 80}


@dataclass(frozen=True)
class LargeShape:
    """BERT-Large's shape, for the anchors' implied utilisation (no model import needed)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    intermediate_size: int = 4096
    vocab_size: int = 30522


def masked_for(seq_len: int) -> float:
    """Masked tokens per sequence: NVIDIA's 20 at 128 and 80 at 512, else 15% of the length."""
    return float(MASKED_PER_SEQ.get(seq_len, round(0.15 * seq_len)))


def anchor_mfu(anchor: Anchor) -> float:
    """The model FLOP utilisation a published anchor implies (BERT-Large FLOPs x seq/s / peak)."""
    flops = pretrain_flops_per_sequence(LargeShape(), anchor.seq_len, masked_for(anchor.seq_len))
    return flops * anchor.seq_per_s / (GPUS[anchor.gpu].peak_tflops * 1e12)


def best_anchor(gpu: str, seq_len: int) -> Anchor | None:
    """The fastest published anchor for `gpu` at `seq_len` (None if there is none)."""
    found = [a for a in ANCHORS if a.gpu == gpu and a.seq_len == seq_len]
    return max(found, key=lambda a: a.seq_per_s, default=None)


@dataclass(frozen=True)
class Projection:
    gpu: str
    seq_len: int
    flops_per_seq: float
    roofline_seq_per_s: float
    anchor: Anchor | None
    anchor_mfu: float | None
    at_anchor_mfu_seq_per_s: float | None


def project(config, seq_len: int, gpus: tuple[str, ...] = ("A100", "H100")) -> list[Projection]:
    """Roofline and anchor-efficiency sequences/s of `config` (a BertConfig) at `seq_len` per GPU.

    H100 has no published BERT anchor here; it borrows the A100 anchor's utilisation (stated in
    the report).
    """
    flops = pretrain_flops_per_sequence(config, seq_len, masked_for(seq_len))
    out = []
    for gpu in gpus:
        roof = GPUS[gpu].peak_tflops * 1e12 / flops
        anchor = best_anchor(gpu, seq_len) or best_anchor("A100", seq_len)
        mfu = anchor_mfu(anchor) if anchor else None
        out.append(Projection(gpu, seq_len, flops, roof, anchor, mfu, roof * mfu if mfu else None))
    return out
