"""BertConfig: presets, HF / Google JSON round trips, validation errors."""
from __future__ import annotations

import dataclasses
import json

import pytest

from bertperf.model import PRESETS, BertConfig
from bertperf.utils.errors import BertperfError

# Google's released sizes (Turc et al. 2019 for the small ones; BERT paper for base / large)
EXPECTED = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_values(name):
    c = BertConfig.preset(name)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == EXPECTED[name]
    assert (c.vocab_size, c.max_position_embeddings, c.type_vocab_size) == (30522, 512, 2)
    assert c.hidden_act == "gelu" and c.layer_norm_eps == 1e-12 and c.kernel_backend == "auto"
    assert BertConfig.resolve(name) == c
    assert set(PRESETS) == set(EXPECTED)


def test_preset_overrides_and_unknown():
    c = BertConfig.preset("tiny", hidden_dropout_prob=0.0, vocab_size=1000)
    assert c.hidden_dropout_prob == 0.0 and c.vocab_size == 1000 and c.hidden_size == 128
    with pytest.raises(BertperfError, match="hiden_size"):
        BertConfig.preset("tiny", hiden_size=3)
    with pytest.raises(BertperfError, match="unknown model preset 'huge'"):
        BertConfig.preset("huge")
    with pytest.raises(BertperfError, match="neither a preset"):
        BertConfig.resolve("no/such/file.json")


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_hf_round_trip_and_transformers_reads_it(tmp_path, name):
    import transformers

    c = BertConfig.preset(name, hidden_dropout_prob=0.05, layer_norm_eps=1e-7, classifier_dropout=0.2)
    p = tmp_path / "config.json"
    c.save_json(p, "hf", architectures=["BertModel"])
    d = json.loads(p.read_text())
    assert d["model_type"] == "bert" and d["architectures"] == ["BertModel"]
    assert not {"kernel_backend", "unpad", "sparse_last_layer"} & set(d)  # run-time settings, not the model's
    assert BertConfig.detect_flavor(d) == "hf"
    assert BertConfig.from_json(p) == c
    assert BertConfig.resolve(tmp_path) == c  # a directory holding config.json
    hf = transformers.BertConfig.from_pretrained(tmp_path)
    for f in dataclasses.fields(BertConfig):
        if f.name not in ("kernel_backend", "unpad", "sparse_last_layer"):
            assert getattr(hf, f.name) == getattr(c, f.name), f.name


@pytest.mark.parametrize("name", ["mini", "large"])
def test_google_round_trip(tmp_path, name):
    c = BertConfig.preset(name, attention_probs_dropout_prob=0.0)
    p = tmp_path / "bert_config.json"
    c.save_json(p, "google")
    d = json.loads(p.read_text())
    # exactly the keys of google-research/bert's BertConfig
    assert set(d) == {"attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size",
                      "initializer_range", "intermediate_size", "max_position_embeddings",
                      "num_attention_heads", "num_hidden_layers", "type_vocab_size", "vocab_size"}
    assert BertConfig.detect_flavor(d) == "google"
    assert BertConfig.from_json(p) == c
    assert BertConfig.resolve(tmp_path) == c  # a directory holding bert_config.json


def test_google_released_config_with_pooler_extras(tmp_path):
    # the bert_config.json of Google's chinese_L-12_H-768_A-12 release, verbatim
    d = {"attention_probs_dropout_prob": 0.1, "directionality": "bidi", "hidden_act": "gelu",
         "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
         "intermediate_size": 3072, "max_position_embeddings": 512, "num_attention_heads": 12,
         "num_hidden_layers": 12, "pooler_fc_size": 768, "pooler_num_attention_heads": 12,
         "pooler_num_fc_layers": 3, "pooler_size_per_head": 128, "pooler_type": "first_token_transform",
         "type_vocab_size": 2, "vocab_size": 21128}
    p = tmp_path / "bert_config.json"
    p.write_text(json.dumps(d))
    c = BertConfig.from_json(p)
    assert c == BertConfig.preset("base", vocab_size=21128)


def test_reads_real_minilm_config(minilm_dir):
    c = BertConfig.from_json(minilm_dir / "config.json")
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (6, 384, 12, 1536)
    assert c.vocab_size == 30522 and c.layer_norm_eps == 1e-12


@pytest.mark.parametrize("field,value,msg", [
    ("hidden_act", "relu", "hidden_act"),
    ("num_attention_heads", 5, "divisible"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob"),
    ("vocab_size", 0, "vocab_size"),
    ("kernel_backend", "gpu", "kernel_backend"),
])
def test_bad_fields(field, value, msg):
    with pytest.raises(BertperfError, match=msg):
        BertConfig.preset("tiny", **{field: value})


def test_bad_json_files(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(BertperfError, match="not valid JSON"):
        BertConfig.from_json(p)
    p.write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(BertperfError, match="lacks vocab_size"):
        BertConfig.from_json(p)
    p.write_text(json.dumps({**BertConfig.preset("tiny").to_hf_dict(), "model_type": "roberta"}))
    with pytest.raises(BertperfError, match="model_type"):
        BertConfig.from_json(p)
    p.write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(BertperfError, match="Google bert_config.json lacks"):
        BertConfig.from_json(p)
    with pytest.raises(BertperfError, match="not found"):
        BertConfig.from_json(tmp_path / "missing.json")
    with pytest.raises(BertperfError, match="layer_norm_eps"):
        BertConfig.preset("tiny", layer_norm_eps=1e-5).to_google_dict()
