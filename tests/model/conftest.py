"""Shared helpers for the model tests: no hub access, small configs, random inputs."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# real sentences of different lengths (one padded batch)
SENTENCES = [
    "Anarchism is a political philosophy and movement that is skeptical of all justifications for "
    "authority and seeks to abolish the institutions it claims maintain unnecessary coercion.",
    "Autism is a neurodevelopmental condition.",
    "The albedo of the Earth is about 0.3, meaning that thirty percent of the incoming sunlight is "
    "reflected back into space.",
    "Hello!",
]


@pytest.fixture(scope="session")
def hf_tokenizer(vocab_file):
    import transformers

    return transformers.BertTokenizer(str(vocab_file), do_lower_case=True)


@pytest.fixture(scope="session")
def sentence_batch(hf_tokenizer):
    """Tokenized SENTENCES as one right-padded batch (the second one as a sentence pair, for segment ids)."""
    firsts = [SENTENCES[0], SENTENCES[1], SENTENCES[2], SENTENCES[3]]
    seconds = [None, SENTENCES[3], None, None]
    ids, seg = [], []
    for a, b in zip(firsts, seconds):
        enc = hf_tokenizer(a, b) if b is not None else hf_tokenizer(a)
        ids.append(enc["input_ids"])
        seg.append(enc["token_type_ids"])
    s = max(len(x) for x in ids)
    pad = hf_tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (s - len(x)) for x in ids])
    segment_ids = torch.tensor([x + [0] * (s - len(x)) for x in seg])
    input_mask = torch.tensor([[1] * len(x) + [0] * (s - len(x)) for x in ids])
    assert len({len(x) for x in ids}) == len(ids), "sentences must have different lengths"
    return input_ids, segment_ids, input_mask


def random_batch(gen: torch.Generator, b: int, s: int, vocab: int, lengths: list[int] | None = None):
    """Random ids with segments (second half = 1 on valid tokens) and right padding."""
    lengths = lengths or [s] * b
    ids = torch.randint(1, vocab, (b, s), generator=gen)
    mask = torch.zeros(b, s, dtype=torch.long)
    seg = torch.zeros(b, s, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        seg[i, n // 2:n] = 1
        ids[i, n:] = 0
    return ids, seg, mask


def random_positions(gen: torch.Generator, lengths: list[int], p: int, counts: list[int]) -> torch.Tensor:
    """masked_lm_positions [B, P]: counts[i] distinct positions in [1, lengths[i]) then zeros."""
    pos = torch.zeros(len(lengths), p, dtype=torch.long)
    for i, (n, c) in enumerate(zip(lengths, counts)):
        pos[i, :c] = torch.randperm(n - 1, generator=gen)[:c].sort().values + 1
    return pos


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Fill every parameter with distinct random values (LayerNorm weights around 1), so that a
    wrong name mapping or a swapped q/k/v cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.05
            is_ln_weight = p.dim() == 1 and ("norm" in name.lower()) and name.endswith("weight")
            p.copy_(1.0 + noise if is_ln_weight else noise)


def pretraining_batch(b: int, s: int, lengths: list[int], vocab: int, seed: int = 1):
    """A padded pre-training batch (ids, segments, mask, up to 6 masked positions per row with
    labels, NSP labels) with rows of the given real lengths, seeded."""
    gen = torch.Generator().manual_seed(seed)
    ids, seg, mask = random_batch(gen, b, s, vocab, lengths)
    counts = [max(1, min(5, n // 3)) for n in lengths]
    pos = random_positions(gen, lengths, 6, counts)
    labels = torch.randint(1, vocab, pos.shape, generator=gen) * (pos > 0)
    nsp = torch.randint(0, 2, (b,), generator=gen)
    return ids, seg, mask, pos, labels, nsp


def loss_and_grads(model: torch.nn.Module, batch, autocast: bool = False):
    """One forward (bf16 autocast if asked) and backward of `model` on `batch`: (output, {name: grad})."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(*batch)
    out.loss.backward()
    return out, {n: p.grad.detach().clone() for n, p in model.named_parameters()}
