"""Task heads on the BERT encoder: pre-training (MLM + NSP) and the three fine-tuning heads.

Pre-training computes the MLM head only at the masked positions: the hidden states of the M
valid masked tokens (``masked_lm_positions > 0``; position 0 is [CLS], never masked, and pads
the list) are gathered BEFORE the transform and the tied decoder, so the [*, V] logits are
[M, V] instead of [B, S, V]. With a 30522-word vocabulary that head dominates a small model's
FLOPs, and computing it densely for ~15% useful rows wastes most of them.

Losses: MLM = mean cross-entropy over the M predictions; NSP = mean cross-entropy over the
batch (label 1 = random next sentence, as Google's `is_random_next` and HF's
`next_sentence_label`); pre-training loss = MLM + NSP. Cross-entropy runs in fp32. The MLM
loss is, with a fused kernel backend, `bertperf.ops.cross_entropy` (the decoder's bias add,
softmax, loss, correct count and the logits' gradient in one pass over [M, V]), with "torch"
`mlm_cross_entropy` (the same in torch ops; the backward scales the gradient in place); the
decoder is `decoder_linear` (a contiguous weight
gradient, see `_DecoderLinear`), and with MLM labels the tied word lookup's gradient is sparse
(see `bertperf.model.bert.BertEmbeddings.forward`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertperf.model.bert import (
    BertModel,
    BertPreTrainedModel,
    bias_gelu,
    init_bert_weights,
    layer_norm,
    model_backend,
)
from bertperf.model.config import BertConfig
from bertperf.ops.cross_entropy import cross_entropy as ops_cross_entropy
from bertperf.ops.linear import linear, uses_fp32_gemm
from bertperf.utils.errors import BertperfError


class BertMLMHead(nn.Module):
    """transform (Linear h->h, GELU, LayerNorm) then the decoder (weight tied to the word
    embeddings, [V, h]) plus an output bias [V]."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # tied by owner
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def init_extra(self) -> None:
        nn.init.zeros_(self.bias)

    def forward(self, hidden: Tensor, labels: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """hidden: [..., h] -> logits [..., V]; with labels (int [M], hidden [M, h]): (logits [M, V],
        mean cross-entropy fp32, correct count).

        The loss goes through this forward (not a separate method) so that module hooks, e.g.
        ZeRO-3's parameter gathering, see the bias used. With a fused kernel backend the decoder
        GEMM leaves out the bias and `bertperf.ops.cross_entropy` adds it while it computes the
        loss, the count and the logits' gradient in one pass; with "torch", `mlm_cross_entropy`
        over the biased logits."""
        be = self.config.kernel_backend
        chosen = model_backend(be, hidden.device)
        x = bias_gelu(linear(hidden, self.transform.weight, None, chosen), self.transform.bias, be)
        x = layer_norm(x, self.norm, be)
        if labels is not None and labels.numel() > 0 and chosen != "torch":
            loss, correct, logits = ops_cross_entropy(decoder_linear(x, self.decoder.weight, None, chosen),
                                                      self.bias, labels.long(), chosen)
            return logits, loss, correct
        logits = decoder_linear(x, self.decoder.weight, self.bias.to(x.dtype), chosen)
        if labels is None:
            return logits
        loss, correct = mlm_cross_entropy(logits, labels)
        return logits, loss, correct


class _DecoderLinear(torch.autograd.Function):
    """x W^T + b whose weight gradient is a fresh contiguous [V, h] tensor (G^T x), not the
    transposed view autograd's linear returns: autograd adds the tied word lookup's dense gradient
    into it in place (into the view it makes a third [V, h] tensor). A sparse lookup gradient is
    added out of place either way (torch 2.13). fp32_gemm: bf16 operands multiplied by fp32 GEMMs
    (see `bertperf.ops.linear`), results rounded to bf16."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, fp32_gemm: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.fp32_gemm = fp32_gemm
        ctx.bias_dtype = None if bias is None else bias.dtype
        a, w = (x.float(), weight.float()) if fp32_gemm else (x, weight)
        y = torch.mm(a, w.t()) if bias is None else torch.addmm(bias.to(a.dtype), a, w.t())
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        # under autocast the forward GEMM ran in the autocast dtype (grad's): so do these, then
        # cast back to the inputs' dtypes (as autocast's own linear backward does)
        dt = torch.float32 if ctx.fp32_gemm else grad.dtype
        g = grad.to(dt)
        dx = g.mm(weight.to(dt)).to(x.dtype) if ctx.needs_input_grad[0] else None
        dw = g.t().mm(x.to(dt)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        db = g.sum(0).to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def decoder_linear(x: Tensor, weight: Tensor, bias: Tensor | None, backend: str = "torch") -> Tensor:
    """The MLM decoder: x [..., h] @ weight [V, h]^T (+ bias [V]) -> [..., V] (see `_DecoderLinear`);
    `backend`: the model's resolved kernel backend (the bf16 GEMM policy of `bertperf.ops.linear`)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    out = _DecoderLinear.apply(x2, weight, bias, uses_fp32_gemm(x2, weight, backend))
    return out.view(*lead, weight.shape[0])


class _MLMCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over [M, V] logits and the count of correct predictions, with the
    gradient of the logits computed in the forward pass (softmax - one-hot), so the backward is
    one scaling. Replaces log_softmax + nll_loss (whose backward zero-fills an [M, V] buffer, then
    runs log_softmax's backward) and a separate argmax: fewer passes over the [M, V] logits.

    The loss of row r is lse_r - x[r, label] with lse_r = max_r - log(p_max_r): p_max (the
    softmax at the largest logit) is at least 1/V, so this never underflows, even where the
    label's probability does. One backward per forward: the [M, V] buffer is scaled in place and
    released (a second backward raises, as torch does without retain_graph)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        probs = torch.softmax(logits, -1, dtype=torch.float32)  # [M, V] fp32 (upcast inside)
        rows = torch.arange(logits.shape[0], device=logits.device)
        top = logits.amax(-1)  # [M]
        picked = logits[rows, labels]  # [M]
        lse = top.float() - probs.amax(-1).log()
        loss = (lse - picked.float()).mean()
        correct = (picked == top).sum()
        probs[rows, labels] -= 1.0  # the gradient of the summed loss, in place
        # kept on ctx, not save_for_backward: the backward scales it in place and releases it
        ctx.grad = probs
        ctx.dtype = logits.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, dloss: Tensor, dcorrect: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("mlm_cross_entropy: backward ran twice through the same MLM loss; it "
                               "frees its [M, V] gradient buffer after the first (retain_graph is not "
                               "supported): recompute the forward")
        out = grad.mul_(dloss / grad.shape[0])  # in place: no new [M, V] buffer
        return out.to(ctx.dtype), None


def mlm_cross_entropy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy in fp32, number of rows whose label holds the largest logit).

    logits: [M, V] (any float dtype; the softmax runs in fp32); labels: int [M], every one a valid
    class (no ignore index). The loss equals `F.cross_entropy(logits.float(), labels)`; the count
    equals `(logits.argmax(-1) == labels).sum()` except when another class ties EXACTLY with the
    label's maximal logit (then argmax may pick the other one; this counts the row correct).
    M = 0 gives a zero loss that keeps the graph connected. The count has no gradient."""
    if labels.numel() == 0:
        return logits.float().sum() * 0.0, torch.zeros((), dtype=torch.long, device=logits.device)
    return _MLMCrossEntropy.apply(logits, labels.long())


@dataclass
class PreTrainingOutput:
    """Outputs of `BertForPreTraining.forward`.

    mlm_logits: [M, V] at the M valid masked positions (row order: batch-major, then the order
    of `masked_lm_positions`), or [B, S, V] at every position when no positions were given.
    nsp_logits: [B, 2]. Losses are fp32 scalars (None without the matching labels); the
    accuracy counts are int64 scalars, computed without gradient (None without labels)."""

    loss: Tensor | None
    mlm_loss: Tensor | None
    nsp_loss: Tensor | None
    mlm_logits: Tensor
    nsp_logits: Tensor
    mlm_correct: Tensor | None = None
    mlm_count: Tensor | None = None
    nsp_correct: Tensor | None = None


def gather_masked(hidden: Tensor, masked_lm_positions: Tensor) -> tuple[Tensor, Tensor]:
    """Hidden states at the valid masked positions.

    hidden: [B, S, h]; masked_lm_positions: int [B, P] (0 = padding). Returns ([M, h], the bool
    validity mask [B, P]) with M = number of positions > 0."""
    valid = masked_lm_positions > 0
    b_idx, p_idx = valid.nonzero(as_tuple=True)
    return hidden[b_idx, masked_lm_positions[b_idx, p_idx]], valid


class BertForPreTraining(BertPreTrainedModel):
    """BERT with the MLM (sparse, tied decoder) and NSP heads (HF `BertForPreTraining`).

    Submodules: bert (BertModel with pooler), mlm (BertMLMHead), nsp (Linear h->2 on the pooled
    [CLS]). `mlm.decoder.weight` IS `bert.embeddings.word.weight` (one Parameter)."""

    hf_architecture = "BertForPreTraining"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=True)
        self.mlm = BertMLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        init_bert_weights(self.mlm.transform, config.initializer_range)
        init_bert_weights(self.mlm.norm, config.initializer_range)
        init_bert_weights(self.nsp, config.initializer_range)
        self.mlm.init_extra()
        self.tie_weights()

    def tie_weights(self) -> None:
        self.mlm.decoder.weight = self.bert.embeddings.word.weight

    def forward(self, input_ids: Tensor, segment_ids: Tensor | None = None,
                input_mask: Tensor | None = None, masked_lm_positions: Tensor | None = None,
                masked_lm_ids: Tensor | None = None,
                next_sentence_labels: Tensor | None = None) -> PreTrainingOutput:
        """input_ids, segment_ids, input_mask: int [B, S]; masked_lm_positions, masked_lm_ids:
        int [B, P] (zero-padded); next_sentence_labels: int [B]. See `PreTrainingOutput`.

        With masked_lm_ids given, the word lookup's gradient is sparse and autograd adds it to the
        decoder's dense gradient of the same (tied) weight: backpropagate `loss` or a sum that
        includes `mlm_loss` (a backward of `nsp_loss` alone would leave a sparse `.grad`)."""
        if masked_lm_ids is not None and masked_lm_positions is None:
            raise BertperfError("masked_lm_ids were given without masked_lm_positions")
        if masked_lm_positions is not None and (masked_lm_positions.dim() != 2
                                                or masked_lm_positions.shape[0] != input_ids.shape[0]):
            raise BertperfError(f"masked_lm_positions has shape {tuple(masked_lm_positions.shape)}, "
                                f"expected [{input_ids.shape[0]}, P]")
        # the MLM loss gives the tied word weight a dense gradient (the decoder's); the lookup's
        # gradient is then added into it as sparse rows (see BertEmbeddings.forward)
        sparse_word_grad = masked_lm_ids is not None and masked_lm_positions is not None
        # the heads read [CLS] and the masked positions: the last layer computes only those rows
        sparse_rows = masked_lm_positions is not None and self.config.sparse_last_layer
        out = self.bert(input_ids, segment_ids, input_mask, sparse_word_grad=sparse_word_grad,
                        output_positions=masked_lm_positions if sparse_rows else None)
        assert out.pooler_output is not None
        nsp_logits = self.nsp(out.pooler_output)
        mlm_loss = nsp_loss = mlm_correct = mlm_count = nsp_correct = None
        if masked_lm_positions is None:
            mlm_logits = self.mlm(out.last_hidden_state)
        else:
            if sparse_rows:  # last_hidden_state: [B, P, h] at masked_lm_positions
                valid = masked_lm_positions > 0
                hidden = out.last_hidden_state[valid]
            else:
                hidden, valid = gather_masked(out.last_hidden_state, masked_lm_positions)
            if masked_lm_ids is not None:
                labels = masked_lm_ids[valid]
                mlm_logits, mlm_loss, mlm_correct = self.mlm(hidden, labels)  # logits [M, V]
                mlm_count = torch.tensor(labels.numel(), device=labels.device)
            else:
                mlm_logits = self.mlm(hidden)  # [M, V]
        if next_sentence_labels is not None:
            labels = next_sentence_labels.reshape(-1).long()
            nsp_loss = F.cross_entropy(nsp_logits.float(), labels)
            with torch.no_grad():
                nsp_correct = (nsp_logits.argmax(-1) == labels).sum()
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = sum(losses[1:], losses[0]) if losses else None
        return PreTrainingOutput(loss=loss, mlm_loss=mlm_loss, nsp_loss=nsp_loss, mlm_logits=mlm_logits,
                                 nsp_logits=nsp_logits, mlm_correct=mlm_correct, mlm_count=mlm_count,
                                 nsp_correct=nsp_correct)


# ----------------------------------------------------------------------------------------------
# Fine-tuning heads
# ----------------------------------------------------------------------------------------------


def _classifier_dropout(config: BertConfig) -> float:
    return config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout


def _label_config(num_labels: int) -> dict[str, Any]:
    id2label = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    return {"id2label": id2label, "label2id": {v: int(k) for k, v in id2label.items()}}


@dataclass
class SequenceClassifierOutput:
    """loss (fp32 scalar or None); logits [B, num_labels]."""

    loss: Tensor | None
    logits: Tensor


@dataclass
class TokenClassifierOutput:
    """loss (fp32 scalar or None); logits [B, S, num_labels]."""

    loss: Tensor | None
    logits: Tensor


@dataclass
class QuestionAnsweringOutput:
    """loss (fp32 scalar or None); start_logits, end_logits [B, S]."""

    loss: Tensor | None
    start_logits: Tensor
    end_logits: Tensor


class _BertClassifier(BertPreTrainedModel):
    """Shared body of the classification heads: a BertModel (with a pooler when the head reads the
    pooled [CLS]) and one Linear(h, num_labels) named `classifier`, as HF names it."""

    add_pooling_layer: bool = True

    def __init__(self, config: BertConfig, num_labels: int = 2):
        super().__init__()
        if not isinstance(num_labels, int) or num_labels < 1:
            raise BertperfError(f"num_labels must be a positive integer, got {num_labels!r}")
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config, add_pooling_layer=self.add_pooling_layer)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_bert_weights(self.classifier, config.initializer_range)

    def hf_config_extra(self) -> dict[str, Any]:
        return _label_config(self.num_labels)


class BertForSequenceClassification(_BertClassifier):
    """Pooled [CLS] -> dropout -> Linear(h, num_labels) (HF `BertForSequenceClassification`).

    Loss with `labels`: cross-entropy (int labels [B]) or, when num_labels == 1, mean squared
    error (float labels [B], regression as STS-B)."""

    hf_architecture = "BertForSequenceClassification"

    def forward(self, input_ids: Tensor, segment_ids: Tensor | None = None, input_mask: Tensor | None = None,
                labels: Tensor | None = None) -> SequenceClassifierOutput:
        pooled = self.bert(input_ids, segment_ids, input_mask).pooler_output
        logits = self.classifier(F.dropout(pooled, _classifier_dropout(self.config), self.training))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.float().reshape(-1), labels.float().reshape(-1))
            else:
                loss = F.cross_entropy(logits.float(), labels.reshape(-1).long())
        return SequenceClassifierOutput(loss=loss, logits=logits)


class BertForTokenClassification(_BertClassifier):
    """Every token's hidden state -> dropout -> Linear(h, num_labels); no pooler
    (HF `BertForTokenClassification`). Loss: cross-entropy over labels [B, S] != -100."""

    hf_architecture = "BertForTokenClassification"
    add_pooling_layer = False

    def forward(self, input_ids: Tensor, segment_ids: Tensor | None = None, input_mask: Tensor | None = None,
                labels: Tensor | None = None) -> TokenClassifierOutput:
        seq = self.bert(input_ids, segment_ids, input_mask).last_hidden_state
        logits = self.classifier(F.dropout(seq, _classifier_dropout(self.config), self.training))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, self.num_labels), labels.reshape(-1).long(),
                                   ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Every token's hidden state -> Linear(h, 2) = (start, end) logits; no pooler
    (HF `BertForQuestionAnswering`). Loss: (CE(start) + CE(end)) / 2; positions outside [0, S)
    are clamped to S and ignored (as HF)."""

    hf_architecture = "BertForQuestionAnswering"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        init_bert_weights(self.qa_outputs, config.initializer_range)

    def forward(self, input_ids: Tensor, segment_ids: Tensor | None = None, input_mask: Tensor | None = None,
                start_positions: Tensor | None = None,
                end_positions: Tensor | None = None) -> QuestionAnsweringOutput:
        seq = self.bert(input_ids, segment_ids, input_mask).last_hidden_state
        start, end = self.qa_outputs(seq).unbind(-1)  # [B, S] each
        loss = None
        if start_positions is not None and end_positions is not None:
            s = start.shape[1]
            sp = start_positions.reshape(-1).long().clamp(0, s)
            ep = end_positions.reshape(-1).long().clamp(0, s)
            loss = (F.cross_entropy(start.float(), sp, ignore_index=s)
                    + F.cross_entropy(end.float(), ep, ignore_index=s)) / 2
        return QuestionAnsweringOutput(loss=loss, start_logits=start, end_logits=end)
