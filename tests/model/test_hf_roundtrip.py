"""save_pretrained / from_pretrained against transformers, for every model class.

bertperf save -> transformers load: no missing, unexpected or mismatched keys, identical outputs.
transformers save -> bertperf load: identical outputs. Parameters are randomised first, so a
wrong name, a swapped q/k/v or a dropped bias shows up in the outputs.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from bertperf.model import (
    BertConfig,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from bertperf.utils.errors import BertperfError
from tests.model.conftest import perturb_, random_batch, random_positions

ATOL = 1e-5
LENGTHS = [13, 7, 16]
S = 16
CONFIG = BertConfig(vocab_size=500, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=96, max_position_embeddings=64, type_vocab_size=2)

# (bertperf class, transformers class name, kwargs)
CASES = [
    (BertModel, "BertModel", {}),
    (BertForPreTraining, "BertForPreTraining", {}),
    (BertForSequenceClassification, "BertForSequenceClassification", {"num_labels": 3}),
    (BertForSequenceClassification, "BertForSequenceClassification", {"num_labels": 1}),
    (BertForTokenClassification, "BertForTokenClassification", {"num_labels": 5}),
    (BertForQuestionAnswering, "BertForQuestionAnswering", {}),
]
IDS = [f"{c[1]}-{c[2].get('num_labels', '')}" for c in CASES]


def _inputs():
    gen = torch.Generator().manual_seed(0)
    ids, seg, mask = random_batch(gen, len(LENGTHS), S, CONFIG.vocab_size, LENGTHS)
    pos = random_positions(gen, LENGTHS, 5, [3, 1, 5])
    return ids, seg, mask, pos


def _hf_outputs(hf_model, name: str, ids, seg, mask, pos) -> dict[str, torch.Tensor]:
    """The transformers model's outputs, in bertperf's layout (MLM logits gathered at pos)."""
    with torch.no_grad():
        r = hf_model(input_ids=ids, token_type_ids=seg, attention_mask=mask)
    valid = mask.bool()
    if name == "BertModel":
        return {"hidden": r.last_hidden_state[valid], "pooled": r.pooler_output}
    if name == "BertForPreTraining":
        b, p = (pos > 0).nonzero(as_tuple=True)
        return {"mlm": r.prediction_logits[b, pos[b, p]], "nsp": r.seq_relationship_logits}
    if name == "BertForQuestionAnswering":
        return {"start": r.start_logits[valid], "end": r.end_logits[valid]}
    if name == "BertForTokenClassification":
        return {"logits": r.logits[valid]}
    return {"logits": r.logits}


def _our_outputs(model, name: str, ids, seg, mask, pos) -> dict[str, torch.Tensor]:
    valid = mask.bool()
    with torch.no_grad():
        if name == "BertForPreTraining":
            o = model(ids, seg, mask, masked_lm_positions=pos)
            return {"mlm": o.mlm_logits, "nsp": o.nsp_logits}
        o = model(ids, seg, mask)
    if name == "BertModel":
        return {"hidden": o.last_hidden_state[valid], "pooled": o.pooler_output}
    if name == "BertForQuestionAnswering":
        return {"start": o.start_logits[valid], "end": o.end_logits[valid]}
    if name == "BertForTokenClassification":
        return {"logits": o.logits[valid]}
    return {"logits": o.logits}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("cls,hf_name,kw", CASES, ids=IDS)
def test_bertperf_save_loads_in_transformers(tmp_path, cls, hf_name, kw):
    import transformers

    torch.manual_seed(1)
    ours = cls(CONFIG, **kw).eval()
    perturb_(ours, seed=2)
    if cls is BertForPreTraining:
        assert ours.mlm.decoder.weight is ours.bert.embeddings.word.weight
    ours.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == [hf_name] and cfg["model_type"] == "bert"
    hf, info = getattr(transformers, hf_name).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    if "num_labels" in kw:
        assert hf.config.num_labels == kw["num_labels"]
    inputs = _inputs()
    _assert_same(_our_outputs(ours, hf_name, *inputs), _hf_outputs(hf, hf_name, *inputs))
    # and back into bertperf: bit-identical
    again = cls.from_pretrained(tmp_path).eval()
    assert again.loading_info == {"initialized": [], "dropped": []}
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


@pytest.mark.parametrize("cls,hf_name,kw", CASES, ids=IDS)
def test_transformers_save_loads_in_bertperf(tmp_path, cls, hf_name, kw):
    import transformers

    hf_cfg = transformers.BertConfig(**CONFIG.to_hf_dict(), **kw)
    torch.manual_seed(3)
    hf = getattr(transformers, hf_name)(hf_cfg).eval()
    perturb_(hf, seed=4)
    hf.tie_weights()
    hf.save_pretrained(tmp_path)
    ours = cls.from_pretrained(tmp_path).eval()
    assert ours.loading_info == {"initialized": [], "dropped": []}
    if "num_labels" in kw:
        assert ours.num_labels == kw["num_labels"]
    inputs = _inputs()
    _assert_same(_our_outputs(ours, hf_name, *inputs), _hf_outputs(hf, hf_name, *inputs))


def _copy_minilm(minilm_dir, dst):
    dst.mkdir()
    shutil.copy(minilm_dir / "config.json", dst / "config.json")
    from safetensors.torch import load_file

    return load_file(str(minilm_dir / "model.safetensors"))


def test_pytorch_model_bin_with_legacy_names(tmp_path, minilm_dir, sentence_batch):
    """pytorch_model.bin with TF-era gamma/beta names, a `bert.` prefix and a position_ids buffer
    loads to the same model as the safetensors original."""
    state = _copy_minilm(minilm_dir, tmp_path / "bin")
    legacy = {}
    for k, v in state.items():
        k = "bert." + k
        if "LayerNorm" in k:
            k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
        legacy[k] = v
    legacy["bert.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(legacy, tmp_path / "bin" / "pytorch_model.bin")
    a = BertModel.from_pretrained(tmp_path / "bin").eval()
    b = BertModel.from_pretrained(minilm_dir).eval()
    ids, seg, mask = sentence_batch
    with torch.no_grad():
        assert torch.equal(a(ids, seg, mask).last_hidden_state, b(ids, seg, mask).last_hidden_state)


def _write(tmp_path, minilm_dir, edit) -> str:
    from safetensors.torch import save_file

    state = _copy_minilm(minilm_dir, tmp_path / "ck")
    edit(state)
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    return str(tmp_path / "ck")


def test_unknown_key_is_an_error(tmp_path, minilm_dir):
    def edit(s):
        s["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(3)
    with pytest.raises(BertperfError, match="unexpected parameters.*rotary"):
        BertModel.from_pretrained(_write(tmp_path, minilm_dir, edit))


def test_missing_encoder_key_is_an_error(tmp_path, minilm_dir):
    def edit(s):
        del s["encoder.layer.5.output.dense.bias"]
    with pytest.raises(BertperfError, match=r"missing layers\.5\.ffn_out\.bias"):
        BertModel.from_pretrained(_write(tmp_path, minilm_dir, edit))


def test_half_a_qkv_is_an_error(tmp_path, minilm_dir):
    def edit(s):
        del s["encoder.layer.2.attention.self.key.weight"]
    with pytest.raises(BertperfError, match="layer.2.attention.self.query.weight"):
        BertModel.from_pretrained(_write(tmp_path, minilm_dir, edit))


def test_partial_head_and_wrong_depth_are_errors(tmp_path, minilm_dir):
    def edit(s):
        s["cls.seq_relationship.weight"] = torch.zeros(2, 384)
    path = _write(tmp_path, minilm_dir, edit)
    with pytest.raises(BertperfError, match="head `nsp` is incomplete"):
        BertForPreTraining.from_pretrained(path)
    with pytest.raises(BertperfError, match="unexpected bert.layers.5"):
        BertForPreTraining.from_pretrained(minilm_dir, num_hidden_layers=5)


def test_num_labels_mismatch_is_an_error(tmp_path):
    BertForSequenceClassification(CONFIG, num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(BertperfError, match="shape mismatch.*classifier.weight"):
        BertForSequenceClassification.from_pretrained(tmp_path, num_labels=4)


def test_no_weights_is_an_error(tmp_path):
    CONFIG.save_json(tmp_path / "config.json")
    with pytest.raises(BertperfError, match="no weights found"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(BertperfError, match="model directory not found"):
        BertModel.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BertperfError, match="no config.json"):
        BertModel.from_pretrained(tmp_path / "empty")


def test_fine_tune_from_pretraining_checkpoint(tmp_path):
    """A BertForPreTraining directory feeds a classifier: encoder and pooler kept, MLM/NSP heads
    dropped, classifier new."""
    torch.manual_seed(5)
    pt = BertForPreTraining(CONFIG)
    perturb_(pt, seed=6)
    pt.save_pretrained(tmp_path)
    cls = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert cls.loading_info == {"initialized": ["classifier"], "dropped": ["mlm", "nsp"]}
    for (n1, p1), (n2, p2) in zip(pt.bert.state_dict().items(), cls.bert.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_explicit_decoder_weight_and_bias(tmp_path):
    """Old checkpoints store cls.predictions.decoder.weight / .bias explicitly: accepted when they
    equal the word embeddings / the MLM bias, an error otherwise."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(7)
    pt = BertForPreTraining(CONFIG)
    perturb_(pt, seed=8)
    pt.save_pretrained(tmp_path)
    st = str(tmp_path / "model.safetensors")
    state = load_file(st)
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    state["cls.predictions.decoder.bias"] = state.pop("cls.predictions.bias")
    save_file(state, st)
    again = BertForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(again.mlm.bias, pt.mlm.bias)
    assert again.mlm.decoder.weight is again.bert.embeddings.word.weight
    state["cls.predictions.decoder.weight"] += 1.0
    save_file(state, st)
    with pytest.raises(BertperfError, match="decoder.weight differs"):
        BertForPreTraining.from_pretrained(tmp_path)
