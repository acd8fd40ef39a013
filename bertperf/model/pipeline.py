"""BERT pre-training as a `deepspeed.pipe.PipelineModule`: layer specs, partitioning, state dicts.

The pipeline is a list of L + 2 layers (L = num_hidden_layers):

    0        TiedLayerSpec("bert", TiedEmbeddingsAndHeads)  the embeddings
    1 .. L   LayerSpec(EncoderLayerPipe)                   one `BertLayer` each
    L + 1    TiedLayerSpec("bert", TiedEmbeddingsAndHeads)  pooler + NSP, then the sparse MLM head

The first and last layers are ONE module type with the key "bert": DeepSpeed builds one
instance per stage that holds either layer, broadcasts its tied weight (the word embedding, which
is also the MLM decoder weight) from the first stage at start and after a checkpoint load, and
all-reduces its gradient between the two stages after every backward pass. The module reuses the
model's own classes (`BertEmbeddings`, `BertMLMHead`, nn.Linear pooler / NSP as in
`BertModel` / `BertForPreTraining`); its `forward` runs the embeddings when given integer ids and
the heads when given hidden states, so both layers are the module itself and DeepSpeed saves both
in its checkpoint (layer_00 and layer_<L+1>). On a stage that holds only one of the two layers, the
other half's parameters are unused copies: they are frozen (requires_grad False), so no optimizer
sees them; the tied word embedding is live on both.

Tuples passed between layers (all shapes static, so any stage boundary works; integer tensors
get no gradient and DeepSpeed sends none back):

    input of layer 0     (input_ids, segment_ids, input_mask, masked_lm_positions)   int64
    layers 0 .. L        -> (hidden [B, S, h] float, input_mask [B, S] int64, masked_lm_positions [B, P] int64)
    layer L + 1          -> (mlm_logits [M, V], nsp_logits [B, 2])   (M = valid masked positions)
    labels (last stage)  (masked_lm_positions [B, P], masked_lm_ids [B, P], next_sentence_labels [B])

`PretrainingLoss` is the pipeline's loss_fn: MLM + NSP cross-entropy as `BertForPreTraining`
computes them, and it records each micro-batch's losses and accuracy counts for the metrics.

Partitioning: balanced by encoder layers (`partition_method="type:EncoderLayerPipe"`; the
embeddings go to the first stage, the heads to the last) when stages <= L, else uniform over the
L + 2 layers (one layer per stage at L + 2 stages).

Gradient norm: DeepSpeed 0.19.8 computes the clipping norm of a pipeline wrongly for this layout
(it would use the first stage's gradients only, and skip the heads as "replicated");
`mark_for_global_grad_norm` sets the parameter flags so the norm is the whole model's. Without it,
`gradient_clipping` (DeepSpeed's default is 1.0) makes a pipeline run diverge from a data-parallel one.

State dicts: `pretraining_to_pipe` / `pipe_to_pretraining` map a `BertForPreTraining` state dict
to the pipe module's names and back; `load_pretraining_weights` loads the part a stage holds;
`pipeline_checkpoint_weights` rebuilds the whole `BertForPreTraining` state dict from the layer
files of a saved pipeline checkpoint (offline, one process).
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertperf.model.bert import BertEmbeddings, BertLayer, attention_mask
from bertperf.model.config import BertConfig
from bertperf.model.heads import BertMLMHead, gather_masked, init_bert_weights, mlm_cross_entropy
from bertperf.utils.errors import BertperfError

TIED_KEY = "bert"
TIED_PREFIX = f"tied_modules.{TIED_KEY}."
WORD_WEIGHT = "embeddings.word.weight"
# parameters of TiedEmbeddingsAndHeads that belong to the embedding half (except the tied word weight)
EMBEDDING_PARTS = ("embeddings.",)
HEAD_PARTS = ("pooler.", "mlm.", "nsp.")
LAYER_FILE_RE = re.compile(r"layer_(\d+)-model_states\.pt$")


class TiedEmbeddingsAndHeads(nn.Module):
    """The embeddings and the pre-training heads in one module, sharing the word embedding.

    Submodules: embeddings (`BertEmbeddings`), pooler (Linear h->h), mlm (`BertMLMHead`, its
    decoder weight IS embeddings.word.weight), nsp (Linear h->2): the names and initialisation of
    `BertForPreTraining` (`bert.embeddings`, `bert.pooler`, `mlm`, `nsp`)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.mlm = BertMLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        init_bert_weights(self, config.initializer_range)
        self.mlm.decoder.weight = self.embeddings.word.weight

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Integer inputs (input_ids, segment_ids, input_mask, masked_lm_positions) -> embeddings
        (hidden, input_mask, masked_lm_positions); float inputs (hidden, input_mask,
        masked_lm_positions) -> heads (mlm_logits [M, V], nsp_logits [B, 2])."""
        if inputs[0].is_floating_point():
            return self.heads(*inputs)
        return self.embed(*inputs)

    def embed(self, input_ids: Tensor, segment_ids: Tensor, input_mask: Tensor,
              masked_lm_positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise BertperfError(f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                                f"({self.config.max_position_embeddings})")
        return self.embeddings(input_ids, segment_ids), input_mask, masked_lm_positions

    def heads(self, hidden: Tensor, input_mask: Tensor, masked_lm_positions: Tensor) -> tuple[Tensor, Tensor]:
        pooled = torch.tanh(self.pooler(hidden[:, 0]))  # as BertModel's pooler
        nsp_logits = self.nsp(pooled)
        masked, _ = gather_masked(hidden, masked_lm_positions)
        return self.mlm(masked), nsp_logits


class EncoderLayerPipe(BertLayer):
    """A `BertLayer` taking and returning the pipeline tuple (hidden, input_mask, positions)."""

    def forward(self, inputs: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        hidden, input_mask, positions = inputs
        return super().forward(hidden, attention_mask(input_mask)), input_mask, positions


@dataclass
class MicroBatchStats:
    """One micro-batch's losses and accuracy counts, the fields `MetricsWindow.add` reads."""

    loss: Tensor
    mlm_loss: Tensor
    nsp_loss: Tensor
    mlm_correct: Tensor
    mlm_count: Tensor
    nsp_correct: Tensor


@dataclass
class PretrainingLoss:
    """The pipeline's loss_fn(outputs, labels): MLM cross-entropy over the valid masked tokens
    plus NSP cross-entropy over the batch, in fp32, as `BertForPreTraining` computes them.

    Each call appends a `MicroBatchStats` to `records` (only on the last stage, where DeepSpeed
    calls it); the trainer drains them with `pop_records`."""

    records: list[MicroBatchStats] = field(default_factory=list)

    def __call__(self, outputs: tuple[Tensor, Tensor], labels: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        mlm_logits, nsp_logits = outputs
        positions, masked_lm_ids, next_sentence_labels = labels
        mlm_labels = masked_lm_ids[positions > 0]  # row order of gather_masked
        mlm_loss, mlm_correct = mlm_cross_entropy(mlm_logits, mlm_labels)
        nsp_labels = next_sentence_labels.reshape(-1).long()
        nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_labels)
        loss = mlm_loss + nsp_loss
        with torch.no_grad():
            self.records.append(MicroBatchStats(
                loss=loss.detach(), mlm_loss=mlm_loss.detach(), nsp_loss=nsp_loss.detach(),
                mlm_correct=mlm_correct,
                mlm_count=torch.tensor(mlm_labels.numel()),
                nsp_correct=(nsp_logits.argmax(-1) == nsp_labels).sum()))
        return loss

    def pop_records(self) -> list[MicroBatchStats]:
        out, self.records = self.records, []
        return out


# ---------------------------------------------------------------------------------------------- layout


def num_pipe_layers(config: BertConfig) -> int:
    """Layers of the pipeline: embeddings, the encoder layers, heads."""
    return config.num_hidden_layers + 2


def partition_method(config: BertConfig, num_stages: int) -> str:
    """DeepSpeed's partition_method for `num_stages` (see the module docstring)."""
    return "type:EncoderLayerPipe" if num_stages <= config.num_hidden_layers else "uniform"


def stage_partition(config: BertConfig, num_stages: int) -> list[int]:
    """Layer boundaries DeepSpeed computes for `partition_method(config, num_stages)`: stage k holds
    layers [parts[k], parts[k + 1]) of the L + 2 (same functions DeepSpeed's PipelineModule calls)."""
    from deepspeed.runtime.utils import partition_balanced, partition_uniform

    n = num_pipe_layers(config)
    if partition_method(config, num_stages) == "uniform":
        parts = partition_uniform(num_items=n, num_parts=num_stages)
    else:
        weights = [0] + [1] * config.num_hidden_layers + [0]
        parts = partition_balanced(weights=weights, num_parts=num_stages)
    return [int(p) for p in parts]


def check_pipeline_layout(config: BertConfig, num_stages: int, world_size: int, zero_stage: int,
                          where: str) -> int:
    """Validate a pipeline run; returns the data-parallel degree world_size / num_stages.

    BertperfError (naming `where`, the DeepSpeed JSON, for the ZeRO stage) when ZeRO-2/3 is asked
    for (DeepSpeed's pipeline engine refuses it), the world size is not a multiple of the stages,
    or there are more stages than the L + 2 pipeline layers."""
    if num_stages < 1:
        raise BertperfError(f"--pipeline_stages must be >= 1, got {num_stages}")
    if zero_stage >= 2:
        raise BertperfError(
            f"{where}: zero_optimization.stage {zero_stage} cannot be combined with --pipeline_stages {num_stages}: "
            "DeepSpeed's pipeline engine refuses ZeRO-2 and ZeRO-3 (gradient/parameter partitioning); "
            "set \"zero_optimization\": {\"stage\": 1} (or 0) in that file, or train without --pipeline_stages")
    if world_size % num_stages:
        raise BertperfError(f"--pipeline_stages {num_stages} does not divide the {world_size} ranks of this run; "
                            f"launch a multiple of {num_stages} ranks (ranks = stages x data-parallel replicas)")
    layers = num_pipe_layers(config)
    if num_stages > layers:
        raise BertperfError(f"--pipeline_stages {num_stages} is more than the {layers} pipeline layers of this model "
                            f"(embeddings, {config.num_hidden_layers} encoder layers, heads); use at most {layers}")
    return world_size // num_stages


def layer_specs(config: BertConfig) -> list[Any]:
    """The L + 2 layer specs of the pipeline (see the module docstring)."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    tied = dict(tied_weight_attr=[WORD_WEIGHT])
    return ([TiedLayerSpec(TIED_KEY, TiedEmbeddingsAndHeads, config, **tied)]
            + [LayerSpec(EncoderLayerPipe, config) for _ in range(config.num_hidden_layers)]
            + [TiedLayerSpec(TIED_KEY, TiedEmbeddingsAndHeads, config, **tied)])


def build_pipeline_module(config: BertConfig, num_stages: int, loss_fn: PretrainingLoss | None = None,
                          activation_checkpoint_interval: int = 0) -> Any:
    """A `deepspeed.pipe.PipelineModule` of BERT pre-training split into `num_stages` stages.

    Needs torch.distributed initialized (every rank calls it; world size a multiple of
    `num_stages`, checked by `check_pipeline_layout`). Weights are freshly initialised per stage;
    load the same ones everywhere with `load_pretraining_weights`. The unused half of the tied
    module on a stage is frozen (module docstring). `activation_checkpoint_interval` > 0
    recomputes that many layers' activations in the backward pass."""
    from deepspeed.pipe import PipelineModule

    module = PipelineModule(layers=layer_specs(config), num_stages=num_stages,
                            loss_fn=loss_fn if loss_fn is not None else PretrainingLoss(),
                            partition_method=partition_method(config, num_stages),
                            activation_checkpoint_interval=activation_checkpoint_interval,
                            checkpointable_layers=["EncoderLayerPipe"])
    parts = [int(p) for p in module.parts]
    if parts != stage_partition(config, num_stages) or any(a >= b for a, b in zip(parts, parts[1:])):
        raise BertperfError(f"pipeline partition {parts} of {num_pipe_layers(config)} layers over {num_stages} "
                            "stages is not the expected one (an empty stage?)")
    freeze_unused_tied_parts(module)
    mark_for_global_grad_norm(module)
    return module


def stage_layers(module: Any) -> range:
    """Indices (in the L + 2 layer list) of the layers this rank's stage holds."""
    return range(module._local_start, module._local_stop)


def freeze_unused_tied_parts(module: Any) -> list[str]:
    """Freeze the half of the tied module that this stage does not run; returns the frozen names."""
    if TIED_KEY not in module.tied_modules:
        return []
    held = stage_layers(module)
    unused: tuple[str, ...] = ()
    if 0 not in held:
        unused += EMBEDDING_PARTS
    if module._num_layers - 1 not in held:
        unused += HEAD_PARTS
    frozen = []
    for name, param in module.tied_modules[TIED_KEY].named_parameters():
        if name != WORD_WEIGHT and name.startswith(unused):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def mark_for_global_grad_norm(module: Any) -> int:
    """Make DeepSpeed's gradient norm (clipping) count each live gradient once; returns the count marked.

    Two DeepSpeed 0.19.8 assumptions do not hold for this pipeline, and would make
    `gradient_clipping` (on by default, 1.0) clip with a wrong norm:
    - a tied module is taken as replicated as a whole: every parameter of its copy on a later
      stage is flagged `ds_pipe_replicated` and left out of the norm. Here only the tied word
      embedding is replicated; the heads live in the last stage's copy alone. The flag is reset
      on everything but the word embedding.
    - the norm is summed over a replica's stages, but on stages other than the first only for
      parameters flagged model-parallel (`model_parallel`); plain pipeline parameters are not.
      Every non-replicated parameter is flagged, so the norm is the whole model's."""
    tied = module.tied_modules[TIED_KEY] if TIED_KEY in module.tied_modules else None
    if tied is not None:
        for name, param in tied.named_parameters():
            if name != WORD_WEIGHT:
                param.ds_pipe_replicated = False
    marked = 0
    for param in module.parameters():
        if not getattr(param, "ds_pipe_replicated", False):
            param.model_parallel = True
            marked += 1
    return marked


# ---------------------------------------------------------------------------------------------- state dicts


def _encoder_key(key: str, num_layers: int) -> str | None:
    """'bert.layers.<i>.<rest>' -> '<i + 1>.<rest>' (the pipe layer index); None for other keys."""
    m = re.match(r"bert\.layers\.(\d+)\.(.+)$", key)
    if not m:
        return None
    i = int(m.group(1))
    if i >= num_layers:
        raise BertperfError(f"state dict key {key}: layer {i} >= num_hidden_layers {num_layers}")
    return f"{i + 1}.{m.group(2)}"


def pretraining_to_pipe(state: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """A `BertForPreTraining` state dict in the pipe module's names (all stages together).

    bert.embeddings.* -> tied_modules.bert.embeddings.*; bert.pooler.*, mlm.*, nsp.* ->
    tied_modules.bert.{pooler,mlm,nsp}.*; bert.layers.<i>.* -> <i + 1>.*. The decoder weight
    is the word embedding (taken from either name)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        enc = _encoder_key(key, num_layers)
        if enc is not None:
            out[enc] = value
        elif key.startswith("bert.embeddings.") or key.startswith("bert.pooler."):
            out[TIED_PREFIX + key[len("bert."):]] = value
        elif key.startswith(("mlm.", "nsp.")):
            out[TIED_PREFIX + key] = value
        else:
            raise BertperfError(f"state dict key {key} is not part of BertForPreTraining")
    word = out.get(TIED_PREFIX + WORD_WEIGHT, out.get(TIED_PREFIX + "mlm.decoder.weight"))
    if word is None:
        raise BertperfError("the state dict has no word embedding (bert.embeddings.word.weight)")
    out[TIED_PREFIX + WORD_WEIGHT] = out[TIED_PREFIX + "mlm.decoder.weight"] = word
    return out


def pipe_to_pretraining(state: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Inverse of `pretraining_to_pipe`: pipe names (whole model) -> `BertForPreTraining` names."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(TIED_PREFIX):
            rest = key[len(TIED_PREFIX):]
            out[("bert." + rest) if rest.startswith(("embeddings.", "pooler.")) else rest] = value
            continue
        m = re.match(r"(\d+)\.(.+)$", key)
        if not m or not 1 <= int(m.group(1)) <= num_layers:
            raise BertperfError(f"pipe state dict key {key} is not a layer of a {num_layers}-layer BERT pipeline")
        out[f"bert.layers.{int(m.group(1)) - 1}.{m.group(2)}"] = value
    out["mlm.decoder.weight"] = out["bert.embeddings.word.weight"]
    return out


def load_pretraining_weights(module: Any, state: dict[str, Tensor], num_layers: int) -> None:
    """Copy the part of a `BertForPreTraining` state dict that this stage holds into `module`
    (a pipe module from `build_pipeline_module`); every local parameter and buffer must be there."""
    mapped = pretraining_to_pipe(state, num_layers)
    local = module.state_dict()
    missing = sorted(k for k in local if k not in mapped)
    if missing:
        raise BertperfError(f"the weights lack {len(missing)} entries of this pipeline stage, e.g. {missing[:3]}")
    module.load_state_dict({k: mapped[k] for k in local}, strict=True)


def pipeline_checkpoint_weights(tag_dir: str, num_layers: int) -> dict[str, Tensor]:
    """The `BertForPreTraining` state dict of a saved pipeline checkpoint, from its per-layer files
    (`layer_<NN>-model_states.pt`: embeddings from layer 00, heads from layer L+1, encoder layer i
    from layer i+1); values as stored (fp32 in an fp32 run; bf16 runs store bf16 module weights,
    returned as float). BertperfError naming the directory when a layer file is missing."""
    files: dict[int, str] = {}
    for path in glob.glob(os.path.join(tag_dir, "layer_*-model_states.pt")):
        m = LAYER_FILE_RE.search(os.path.basename(path))
        if m:
            files.setdefault(int(m.group(1)), path)
    need = range(num_layers + 2)
    missing = [i for i in need if i not in files]
    if missing:
        raise BertperfError(f"{tag_dir}: pipeline layer files missing for layers {missing} "
                            f"(layer_NN-model_states.pt); the checkpoint is incomplete or not a pipeline checkpoint")
    pipe: dict[str, Tensor] = {}
    for i in need:
        layer = torch.load(files[i], map_location="cpu", weights_only=True)
        if i == 0 or i == num_layers + 1:
            keep = EMBEDDING_PARTS if i == 0 else HEAD_PARTS
            pipe.update({TIED_PREFIX + k: v.float() for k, v in layer.items() if k.startswith(keep)})
        else:
            pipe.update({f"{i}.{k}": v.float() for k, v in layer.items()})
    return pipe_to_pretraining(pipe, num_layers)


def is_pipeline_checkpoint(tag_dir: str) -> bool:
    """True when `tag_dir` holds DeepSpeed pipeline layer files."""
    return bool(glob.glob(os.path.join(tag_dir, "layer_*-model_states.pt")))
