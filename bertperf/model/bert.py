"""The BERT encoder: embeddings, post-LN transformer layers, pooler.

Architecture as in the original BERT (Devlin et al. 2019, google-research/bert `modeling.py`):
post-LN sublayers ``x = LayerNorm(x + Dropout(Sublayer(x)))``, erf GELU, learned absolute
position embeddings, segment (token type) embeddings, a tanh pooler on [CLS].

Parameters use bertperf's own names; the attention's query, key and value projections are ONE
fused Linear (h -> 3h, rows ordered q | k | v) so a single GEMM produces all three.
`bertperf.convert.hf` maps the names to and from HuggingFace's (splitting / concatenating q, k, v).

Fusable points. Each is one call of a small function below, so `BertConfig.kernel_backend` can
route it to a fused op without touching the model code:

* `bias_dropout_residual_layer_norm`  after the attention-output and the FFN-output GEMMs
* `bias_gelu`                         after the FFN-input GEMM (and in the MLM transform)
* `attention`                         softmax(Q K^T / sqrt(d) + mask) V with attention dropout
* `layer_norm`                        plain LayerNorm (embeddings, MLM transform)

The GEMMs run without their bias (`F.linear(x, W)`); the bias is handed to the fused point, so
the parameters keep their names and shapes (checkpoints and the HF mapping are unchanged).
`kernel_backend` "torch" is the eager composite; "cpu" / "cuda" / "triton" / "auto" route the
bias + residual + LayerNorm, bias + GELU and bias + dropout + residual points to the fused ops
of `bertperf.ops` (chosen per call by the tensors' device, logged once). `attention_impl` picks
the attention: "sdpa" (torch's SDPA, any backend) or "fused" (scores by matmul, then the fused
scale + mask + softmax + dropout op of `bertperf.ops.softmax` on `kernel_backend`, then P V).

Training fast paths (same results as the plain composite, see tests/model/test_fast_paths.py):
* no padding in the batch -> no attention mask (SDPA's and the softmax op's mask work skipped);
* `config.unpad`: the projections, FFN and fused points run on the valid tokens only (`Packing`),
  attention on the padded layout; pays only for batches with much padding;
* the tied word embedding's lookup gradient can be sparse (`sparse_word_grad`), added into the
  decoder's dense gradient by autograd (see `BertEmbeddings.forward`).

Shapes: B batch, S sequence length, h hidden size, A heads, d = h / A head size, I FFN width.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertperf.model.config import BertConfig
from bertperf.ops.backend import resolve_backend
from bertperf.ops.bias_dropout_residual import bias_dropout_residual as ops_bias_dropout_residual
from bertperf.ops.bias_gelu import bias_gelu as ops_bias_gelu
from bertperf.ops.layer_norm import layer_norm as ops_layer_norm
from bertperf.ops.linear import linear
from bertperf.ops.packed_attention import packed_attention, packed_attention_supported, split_heads
from bertperf.ops.softmax import softmax as ops_softmax
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

T = TypeVar("T", bound="BertPreTrainedModel")


# ----------------------------------------------------------------------------------------------
# Fusable points (one function each; "torch" = eager composite, else the ops of bertperf.ops)
# ----------------------------------------------------------------------------------------------


_chosen: dict[tuple[str, str], str] = {}


def model_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend (`cpu`, `cuda`, `triton` or `torch`) that `kernel_backend` = `backend`
    runs on tensors of `device`; logged once per (setting, device type) (`auto` by
    `resolve_backend`, once per device type). Raises BertperfError
    naming `kernel_backend` if the setting is unknown or cannot run there (see
    `bertperf.ops.backend.resolve_backend`; the Triton interpreter is read from the environment
    when the process starts, so the cached answer stays valid).

    Under torch.compile every setting runs as "torch": Inductor fuses the eager composites into
    its own kernels, while the fused ops of `bertperf.ops` would split the graph (their dropout
    seed is drawn on the host, a graph break per call)."""
    if torch.compiler.is_compiling():
        return "torch"
    key = (backend, torch.device(device).type)
    chosen = _chosen.get(key)
    if chosen is None:
        chosen = "torch" if backend == "torch" else resolve_backend(backend, key[1])
        _chosen[key] = chosen
        if backend != "auto":  # resolve_backend logs what "auto" chose, once per device type
            log.info("model kernel_backend %r on %s tensors -> %r", backend, key[1], chosen)
    return chosen


def bias_dropout_residual_layer_norm(y: Tensor, bias: Tensor, residual: Tensor, norm: nn.LayerNorm,
                                     p: float, training: bool, backend: str) -> Tensor:
    """LayerNorm(Dropout(y + bias) + residual): the post-LN sublayer output.

    y, residual: [..., h]; bias: [h]; returns [..., h]. Fused backends: one `layer_norm` op with
    the bias and the residual folded in, or (dropout active) `bias_dropout_residual` then
    `layer_norm`. Mixed dtypes (bf16 GEMM output, fp32 residual under autocast) are computed in
    the wider one, as the eager composite does."""
    chosen = model_backend(backend, y.device)
    if chosen == "torch":
        x = F.dropout(y + bias.to(y.dtype), p, training)
        return F.layer_norm(x + residual, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    dtype = torch.promote_types(y.dtype, residual.dtype)
    y, residual = y.to(dtype), residual.to(dtype)
    if training and p > 0.0:
        s = ops_bias_dropout_residual(y, bias, residual, p, True, None, chosen)
        return ops_layer_norm(s, norm.weight, norm.bias, None, None, norm.eps, chosen)
    return ops_layer_norm(y, norm.weight, norm.bias, bias, residual, norm.eps, chosen)


def bias_gelu(y: Tensor, bias: Tensor, backend: str) -> Tensor:
    """GELU(y + bias) with the exact erf GELU. y: [..., n]; bias: [n]; returns y's dtype."""
    chosen = model_backend(backend, y.device)
    if chosen == "torch":
        return F.gelu(y + bias.to(y.dtype))
    return ops_bias_gelu(y, bias, "none", chosen)


def layer_norm(x: Tensor, norm: nn.LayerNorm, backend: str) -> Tensor:
    """LayerNorm over the last dimension with `norm`'s parameters."""
    chosen = model_backend(backend, x.device)
    if chosen == "torch":
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return ops_layer_norm(x, norm.weight, norm.bias, None, None, norm.eps, chosen)


def attention_mask_bias(mask: Tensor) -> Tensor:
    """The additive form of a bool attention mask: 0 where True (attend), float32's lowest value
    where False. mask: bool [B, 1, 1, S] -> float32 [B, 1, 1, S]."""
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return bias.masked_fill_(~mask, torch.finfo(torch.float32).min)


def attention_mask(input_mask: Tensor | None) -> Tensor | None:
    """The bool attention mask [B, 1, 1, S] (True = attend) of an int input_mask [B, S]
    (1 = token, 0 = padding), or None when there is no padding: masking nothing is the same as no
    mask, and unmasked attention skips SDPA's mask handling. Under torch.compile the mask is
    always kept (no data-dependent branch in the graph)."""
    if input_mask is None:
        return None
    if not torch.compiler.is_compiling() and bool(input_mask.all()):
        return None
    return input_mask[:, None, None, :].bool()


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float, training: bool,
              backend: str, impl: str = "auto") -> Tensor:
    """softmax(q k^T / sqrt(d), masked) v with dropout p on the probabilities.

    q, k, v: [B, A, S, d]; mask: bool [B, 1, 1, S] (True = attend) or None; returns [B, A, S, d].
    impl "sdpa": torch's SDPA on every backend (its dropout draws from torch's generator).
    impl "fused": scores = q k^T by one batched matmul ([B, A, S, S], in q's dtype), then the
    fused scale + additive mask + softmax + dropout op of `bertperf.ops.softmax` on `backend`
    (the eager composite for "torch"), then probs v. Both give the same result without dropout.
    impl "auto": "fused" when `backend` resolves to the C++ CPU kernels, else "sdpa".
    A query row whose keys are all masked gives NaN with sdpa and a uniform row with fused:
    every sequence needs one valid token."""
    chosen = model_backend(backend, q.device)  # validates the setting on this device
    if attention_path(impl, chosen) == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p if training else 0.0)
    scores = torch.matmul(q, k.transpose(-1, -2))  # [B, A, S, S]
    bias = None if mask is None else attention_mask_bias(mask)
    probs = ops_softmax(scores, bias, q.shape[-1] ** -0.5, p, training, None, chosen)
    return torch.matmul(probs.to(v.dtype), v)


def attention_path(impl: str, chosen: str) -> str:
    """"sdpa" or "fused" for the setting `impl` on the resolved kernel backend `chosen`:
    "auto" is "fused" with the C++ CPU kernels, else "sdpa"."""
    if impl == "auto":
        return "fused" if chosen == "cpu" else "sdpa"
    return impl


def qkv_attention(qkv: Tensor, heads: int, mask: Tensor | None, p: float, training: bool, backend: str,
                  impl: str = "auto") -> Tensor:
    """`attention` over the fused projection's output: qkv [B, S, 3h] (q | k | v) -> [B, S, h].

    On the fused path with the C++ CPU kernels (fp32, S <= 256) the GEMMs read q, k, v in place
    and write the heads side by side (`bertperf.ops.packed_attention`); otherwise q, k, v are
    [B, A, S, d] views and `attention` runs. Same result, same dropout mask for the same seed."""
    b, s, three_h = qkv.shape
    chosen = model_backend(backend, qkv.device)
    if attention_path(impl, chosen) == "fused" and packed_attention_supported(qkv, chosen):
        bias = None if mask is None else attention_mask_bias(mask)
        return packed_attention(qkv, bias, heads, p, training, None, chosen)
    q, k, v = split_heads(qkv, heads)
    ctx = attention(q, k, v, mask, p, training, backend, impl)
    return ctx.transpose(1, 2).reshape(b, s, three_h // 3)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    """word + position + segment embeddings, LayerNorm, dropout.

    Parameters: word [V, h], position [P, h], token_type [T, h], norm (LayerNorm h)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor, segment_ids: Tensor, sparse_word_grad: bool = False) -> Tensor:
        """input_ids, segment_ids: int [B, S] -> [B, S, h].

        sparse_word_grad: the word lookup's gradient is a sparse [V, h] tensor (B*S rows) instead of
        a dense one. Only for a word weight that also receives a dense gradient in the same backward
        (the tied MLM decoder), so `.grad` ends dense: autograd adds the sparse rows to the dense
        gradient (torch 2.13: one [V, h] copy plus the rows) instead of zero-filling a dense [V, h]
        buffer, scattering into it and adding two dense [V, h] tensors. Ignored under
        torch.compile (dense there)."""
        s = input_ids.shape[1]
        pos = torch.arange(s, device=input_ids.device)
        sparse = sparse_word_grad and not torch.compiler.is_compiling()
        word = F.embedding(input_ids, self.word.weight, sparse=sparse)
        x = word + self.token_type(segment_ids) + self.position(pos)
        x = layer_norm(x, self.norm, self.config.kernel_backend)
        return F.dropout(x, self.config.hidden_dropout_prob, self.training)


@dataclass
class Packing:
    """Where the T valid tokens of a padded [B, S] batch sit: `index` int64 [T], the flat
    positions (b * S + s) of the tokens whose input_mask is 1, in order."""

    index: Tensor
    batch: int
    seq: int

    @classmethod
    def of(cls, input_mask: Tensor) -> "Packing":
        """input_mask: int [B, S] (1 = token)."""
        return cls(input_mask.reshape(-1).nonzero().squeeze(1), input_mask.shape[0], input_mask.shape[1])

    def unpad(self, x: Tensor) -> Tensor:
        """[B, S, n] -> [T, n] (the valid tokens)."""
        return x.reshape(self.batch * self.seq, -1).index_select(0, self.index)

    def pad(self, x: Tensor) -> Tensor:
        """[T, n] -> [B, S, n] with zeros at the pad positions."""
        out = x.new_zeros(self.batch * self.seq, x.shape[-1]).index_copy(0, self.index, x)
        return out.view(self.batch, self.seq, -1)


class BertLayer(nn.Module):
    """One post-LN transformer layer.

    Parameters: qkv [3h, h] (+3h bias; rows q | k | v), attn_out [h, h], attn_norm,
    ffn_in [I, h], ffn_out [h, I], ffn_norm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.config = config
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(h, i)
        self.ffn_out = nn.Linear(i, h)
        self.ffn_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None, packed: "Packing | None" = None,
                rows: Tensor | None = None) -> Tensor:
        """x: [B, S, h]; mask: bool [B, 1, 1, S] or None -> [B, S, h].

        With `packed`, x is [T, h]: the T valid tokens only (see `Packing`); the projections,
        the FFN and the fused points run on them, attention on the padded [B, S] layout.
        With `rows` (int64 [B, R], positions in [0, S)), only those rows' outputs are computed:
        keys and values at every token, the rest (queries' attention, output projection, FFN)
        at the R rows; returns [B, R, h] (padded layout, also when `packed`)."""
        cfg = self.config
        be, h = cfg.kernel_backend, cfg.hidden_size
        b, s = (packed.batch, packed.seq) if packed is not None else (x.shape[0], x.shape[1])
        a, d = cfg.num_attention_heads, cfg.head_size
        gemm = model_backend(be, x.device)  # the bf16 GEMM policy of bertperf.ops.linear
        qkv = linear(x, self.qkv.weight, self.qkv.bias, gemm)  # [B, S, 3h] (packed: [T, 3h])
        if packed is not None:
            qkv = packed.pad(qkv)
        p_attn = cfg.attention_probs_dropout_prob
        if rows is None:
            ctx = qkv_attention(qkv.view(b, s, 3 * h), a, mask, p_attn, self.training, be, cfg.attention_impl)
        else:
            q, k, v = split_heads(qkv.view(b, s, 3 * h), a)  # 3 x [B, A, S, d]
            if packed is not None:
                x, packed = packed.pad(x), None
            s = rows.shape[1]
            q = q.gather(2, rows[:, None, :, None].expand(b, a, s, d))  # [B, A, R, d]
            x = x.gather(1, rows[:, :, None].expand(b, s, h))  # the residual at the rows, [B, R, h]
            ctx = attention(q, k, v, mask, p_attn, self.training, be, cfg.attention_impl)
            ctx = ctx.transpose(1, 2).reshape(b, s, h)
        if packed is not None:
            ctx = packed.unpad(ctx)  # [T, h]
        x = bias_dropout_residual_layer_norm(
            linear(ctx, self.attn_out.weight, None, gemm), self.attn_out.bias, x, self.attn_norm,
            cfg.hidden_dropout_prob, self.training, be)
        mid = bias_gelu(linear(x, self.ffn_in.weight, None, gemm), self.ffn_in.bias, be)  # [B, S, I]
        return bias_dropout_residual_layer_norm(
            linear(mid, self.ffn_out.weight, None, gemm), self.ffn_out.bias, x, self.ffn_norm,
            cfg.hidden_dropout_prob, self.training, be)


# ----------------------------------------------------------------------------------------------
# Base class: init, from_pretrained / save_pretrained
# ----------------------------------------------------------------------------------------------


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT initialisation of `module` and its children: Linear/Embedding weights ~ N(0, std),
    Linear biases 0, LayerNorm weight 1 / bias 0. Modules with other parameters initialise
    them in an `init_extra()` method (called here)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        hook = getattr(m, "init_extra", None)
        if callable(hook):
            hook()


class BertPreTrainedModel(nn.Module):
    """Common base: BERT initialisation and the HuggingFace directory round trip.

    `hf_architecture` is the transformers class the saved directory loads as."""

    hf_architecture: str = ""

    config: BertConfig

    def init_weights(self) -> None:
        """BERT initialisation of every submodule (see `init_bert_weights`), then re-tie."""
        init_bert_weights(self, self.config.initializer_range)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Re-tie shared parameters (the MLM decoder); no-op for models without ties."""

    @classmethod
    def from_pretrained(cls: type[T], path: "str | os.PathLike[str]", **kwargs: Any) -> T:
        """Load a HuggingFace directory (config.json + model.safetensors or pytorch_model.bin).

        kwargs: BertConfig field overrides (e.g. hidden_dropout_prob, kernel_backend) and, for
        the classification heads, `num_labels`. Heads absent from the checkpoint are freshly
        initialised (listed in `model.loading_info`); see `bertperf.convert.hf.load_pretrained`."""
        from bertperf.convert.hf import load_pretrained  # convert sits below model in the layout

        return load_pretrained(cls, path, **kwargs)

    def save_pretrained(self, path: "str | os.PathLike[str]") -> None:
        """Write a HuggingFace directory (config.json + model.safetensors) that transformers'
        `hf_architecture` class loads with no missing or unexpected keys."""
        from bertperf.convert.hf import save_pretrained

        save_pretrained(self, path)

    def hf_config_extra(self) -> dict[str, Any]:
        """Extra keys for the saved config.json (e.g. id2label of a classifier)."""
        return {}

    @property
    def num_parameters(self) -> int:
        """Number of distinct parameters (tied ones counted once)."""
        return sum(p.numel() for p in self.parameters())


def _check_inputs(config: BertConfig, input_ids: Tensor, segment_ids: Tensor | None,
                  input_mask: Tensor | None) -> None:
    if input_ids.dim() != 2:
        raise BertperfError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
    s = input_ids.shape[1]
    if s > config.max_position_embeddings:
        raise BertperfError(
            f"sequence length {s} exceeds max_position_embeddings ({config.max_position_embeddings}): "
            f"truncate the inputs or use a config with more positions")
    for name, t in (("segment_ids", segment_ids), ("input_mask", input_mask)):
        if t is not None and t.shape != input_ids.shape:
            raise BertperfError(f"{name} has shape {tuple(t.shape)}, input_ids {tuple(input_ids.shape)}")


@dataclass
class BertModelOutput:
    """last_hidden_state [B, S, h]; pooler_output [B, h] (tanh(W h_[CLS] + b)) or None."""

    last_hidden_state: Tensor
    pooler_output: Tensor | None


class BertModel(BertPreTrainedModel):
    """The BERT encoder (HF `BertModel`): embeddings, `num_hidden_layers` layers, optional pooler."""

    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None
        self.init_weights()

    def forward(self, input_ids: Tensor, segment_ids: Tensor | None = None,
                input_mask: Tensor | None = None, sparse_word_grad: bool = False,
                output_positions: Tensor | None = None) -> BertModelOutput:
        """input_ids, segment_ids (default 0), input_mask (1 = token, 0 = padding; default all 1):
        int [B, S]. Padding positions get outputs too (zeros with `config.unpad`), but valid
        positions never see them.
        sparse_word_grad: see `BertEmbeddings.forward` (only for a tied decoder).
        output_positions: int [B, P] or None. When given, last_hidden_state is [B, P, h], the
        outputs at those positions only: the last layer computes just them and [CLS] (for the
        pooler), see `BertLayer.forward`'s `rows`. The values equal the full output's there."""
        _check_inputs(self.config, input_ids, segment_ids, input_mask)
        if segment_ids is None:
            segment_ids = torch.zeros_like(input_ids)
        mask = attention_mask(input_mask)
        x = self.embeddings(input_ids, segment_ids, sparse_word_grad)
        packed = None
        if self.config.unpad and mask is not None and not torch.compiler.is_compiling():
            packed = Packing.of(input_mask)
            x = packed.unpad(x)  # [T, h]
        rows = None
        if output_positions is not None:  # [CLS] first (the pooler reads it), then the positions
            rows = torch.cat([output_positions.new_zeros(output_positions.shape[0], 1), output_positions], 1).long()
        last = len(self.layers) - 1  # BertConfig requires at least one layer
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, packed, rows if i == last else None)  # with rows: [B, 1 + P, h], padded layout
        if packed is not None and rows is None:
            x = packed.pad(x)  # pad positions: zeros
        pooled = None
        if self.pooler is not None:
            pooled = torch.tanh(self.pooler(x[:, 0]))
        return BertModelOutput(last_hidden_state=x if rows is None else x[:, 1:], pooler_output=pooled)
