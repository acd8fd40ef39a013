"""FLOP counts for BERT pre-training, to turn measured sequences/s into achieved TFLOP/s.

Only matrix multiplications are counted (2 FLOPs per multiply-add); element-wise work (softmax,
LayerNorm, GELU, dropout, biases) and embedding look-ups are ignored, as in the usual MFU
accounting. A training step costs 3x the forward pass: the backward pass computes the gradients
of both the inputs and the weights of every matmul, each as large as the forward product.

Per sequence of length s with m masked (predicted) tokens, for L layers, hidden h, FFN width i,
vocabulary V:

    encoder, dense:   6 * s * L * (4*h^2 + 2*h*i)     Q, K, V, output projections and the FFN;
                                                     = 6*L*12*h^2 per token when i = 4h
    encoder, attention: 6 * s * L * 2*s*h = 12*L*s^2*h    scores Q K^T and the weighted sum P V
    MLM head (sparse): 6 * m * (h^2 + V*h)           transform dense + tied decoder, computed only
                                                     at the m masked positions
    NSP head:          6 * (h^2 + 2*h)               pooler dense on [CLS] + 2-way classifier

Per token this is REFERENCE.md's 6*L*12*h^2 + 12*L*s*h + 6*f*(h^2 + V*h) with f = m/s, plus the
tiny NSP term. BERT-Base (L=12, h=768, i=3072, V=30522) at s=128, m=20: ~69.9 GFLOP per sequence.
Padding tokens are counted: the encoder computes them.

`last_layer_rows` = r counts a last layer that computes its outputs at r rows only (bertperf's
`sparse_last_layer`: r = m + 1, [CLS] and the masked positions): Q, K, V projections at every
token, attention scores and the weighted sum for r query rows, the output projection and the FFN
at r rows. The bench credits it to bertperf's own count ("MFU own FLOPs"), not to the model count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class _BertShape(Protocol):
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int


@dataclass(frozen=True)
class PretrainFlops:
    """Training FLOPs (forward + backward) of one sequence, by part."""

    dense: float
    attention: float
    mlm_head: float
    nsp_head: float

    @property
    def total(self) -> float:
        return self.dense + self.attention + self.mlm_head + self.nsp_head


def pretrain_flops_breakdown(config: _BertShape, seq_len: int, masked_per_seq: float,
                             last_layer_rows: float | None = None) -> PretrainFlops:
    """Training FLOPs of one sequence of `seq_len` tokens with `masked_per_seq` predicted tokens.

    `config` needs hidden_size, num_hidden_layers, intermediate_size and vocab_size (a BertConfig).
    `masked_per_seq` may be fractional (a measured mean). `last_layer_rows`: see the module
    docstring (None: the last layer computes every row). See the module docstring for the formula.
    """
    h = float(config.hidden_size)
    n_layers = float(config.num_hidden_layers)
    inter = float(config.intermediate_size)
    vocab = float(config.vocab_size)
    s = float(seq_len)
    m = float(masked_per_seq)
    if s <= 0 or m < 0:
        raise ValueError(f"seq_len must be > 0 and masked_per_seq >= 0, got {seq_len}, {masked_per_seq}")
    dense = 6.0 * s * n_layers * (4.0 * h * h + 2.0 * h * inter)
    attention = 12.0 * n_layers * s * s * h
    if last_layer_rows is not None and n_layers >= 1:
        r = min(float(last_layer_rows), s)
        dense -= 6.0 * (s - r) * (h * h + 2.0 * h * inter)  # output projection and FFN at r rows only
        attention -= 12.0 * (s - r) * s * h  # r query rows
    return PretrainFlops(
        dense=dense,
        attention=attention,
        mlm_head=6.0 * m * (h * h + vocab * h),
        nsp_head=6.0 * (h * h + 2.0 * h),
    )


def pretrain_flops_per_sequence(config: _BertShape, seq_len: int, masked_per_seq: float,
                                last_layer_rows: float | None = None) -> float:
    """Total training FLOPs (3x forward) of one pre-training sequence; see the module docstring."""
    return pretrain_flops_breakdown(config, seq_len, masked_per_seq, last_layer_rows).total


def achieved_tflops(flops_per_sequence: float, sequences_per_second: float) -> float:
    """Achieved TFLOP/s: FLOPs per sequence times sequences per second, / 1e12."""
    return flops_per_sequence * sequences_per_second / 1e12
