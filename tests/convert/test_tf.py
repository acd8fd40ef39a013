"""Google TF checkpoints read without TensorFlow (`bertperf.convert.tf`).

The fixtures in fixtures/tf_tiny/ were written by TensorFlow 2.20 (`scripts/make_tf_tiny_fixture.py`,
tf.raw_ops.SaveV2) with BERT's variable names; expected.npz holds the values it wrote. The
reference for the name mapping is a numpy forward pass of Google's modeling.py on the raw TF
variables (x @ kernel + bias, erf GELU, LayerNorm eps 1e-12), compared with the bertperf model.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bertperf.convert import tf as tfc
from bertperf.utils.errors import BertperfError

FIX = Path(__file__).parent / "fixtures" / "tf_tiny"
PRE = FIX / "pretrain" / "bert_model.ckpt"
CLS = FIX / "classifier" / "model.ckpt-3"


def expected(which: str) -> dict[str, np.ndarray]:
    e = np.load(FIX / which / "expected.npz")
    return {k.replace("|", "/"): e[k] for k in e.files}


def test_crc32c_known_values():
    assert tfc.crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert tfc.crc32c(b"") == 0
    assert tfc.crc32c(b"6789", tfc.crc32c(b"12345")) == 0xE3069283


@pytest.mark.parametrize("n", [1024, 1024 + 13, 4097, 77_777])
def test_vectorised_crc32c_matches_the_byte_loop(n, monkeypatch):
    """Above VECTOR_CRC_MIN_BYTES crc32c runs lanes in numpy and folds them (lowered here to
    test small sizes: 1 lane, 1 lane + tail, several lanes); the reference is the byte loop."""
    monkeypatch.setattr(tfc, "VECTOR_CRC_MIN_BYTES", 1024)
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    for start in (0, 0x1234ABCD):
        want = tfc._crc32c_scalar(data, start ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
        assert tfc.crc32c(data, start) == want


@pytest.mark.parametrize("which,prefix", [("pretrain", PRE), ("classifier", CLS)])
def test_reads_every_variable_exactly(which, prefix):
    got = tfc.read_tf_checkpoint(str(prefix))
    want = expected(which)
    assert set(got) == set(want)
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape and g.dtype == w.dtype, name
        np.testing.assert_array_equal(g, w, err_msg=name)


def test_dtypes_int64_bfloat16_float16():
    v = tfc.read_tf_checkpoint(str(PRE))
    assert v["global_step"].dtype == np.int64 and int(v["global_step"]) == 1000
    np.testing.assert_array_equal(v["cls/seq_relationship/output_bias/ExponentialMovingAverage"], [1.5, -2.25])
    assert v["cls/seq_relationship/output_bias/Momentum"].dtype == np.float16
    shapes = tfc.list_tf_variables(str(PRE))
    assert shapes["cls/seq_relationship/output_bias/ExponentialMovingAverage"] == ((2,), "bfloat16")
    assert shapes["bert/encoder/layer_1/intermediate/dense/kernel"] == ((8, 16), "float32")


@pytest.mark.parametrize("name,want", [
    ("bert/embeddings/word_embeddings", ("bert.embeddings.word_embeddings.weight", False)),
    ("bert/embeddings/LayerNorm/gamma", ("bert.embeddings.LayerNorm.weight", False)),
    ("bert/encoder/layer_11/attention/self/query/kernel", ("bert.encoder.layer.11.attention.self.query.weight", True)),
    ("bert/encoder/layer_0/output/LayerNorm/beta", ("bert.encoder.layer.0.output.LayerNorm.bias", False)),
    ("bert/pooler/dense/bias", ("bert.pooler.dense.bias", False)),
    ("cls/predictions/transform/dense/kernel", ("cls.predictions.transform.dense.weight", True)),
    ("cls/predictions/output_bias", ("cls.predictions.bias", False)),
    ("cls/seq_relationship/output_weights", ("cls.seq_relationship.weight", False)),
    ("output_weights", ("classifier.weight", False)),
    ("cls/squad/output_bias", ("qa_outputs.bias", False)),
    ("bert/encoder/layer_0/output/dense/kernel/adam_m", None),
    ("bert/embeddings/word_embeddings/adam_v", None),
    ("global_step", None),
])
def test_name_mapping(name, want):
    assert tfc.tf_to_hf_name(name) == want


def _ln(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * g + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def reference_forward(v: dict[str, np.ndarray], ids, segs, mask, layers: int, heads: int):
    """Google modeling.py in numpy (float64) on TF variables: sequence output, pooled output."""
    v = {k: a.astype(np.float64) for k, a in v.items() if a.dtype.kind == "f"}
    B, S = ids.shape
    x = v["bert/embeddings/word_embeddings"][ids] + v["bert/embeddings/token_type_embeddings"][segs] \
        + v["bert/embeddings/position_embeddings"][:S][None]
    x = _ln(x, v["bert/embeddings/LayerNorm/gamma"], v["bert/embeddings/LayerNorm/beta"])
    H = x.shape[-1]
    d = H // heads
    adder = (1.0 - mask[:, None, None, :]) * -10000.0
    for n in range(layers):
        p = f"bert/encoder/layer_{n}/"
        dense = lambda t, name: t @ v[p + name + "/kernel"] + v[p + name + "/bias"]  # noqa: E731
        q, k, val = (dense(x, f"attention/self/{m}").reshape(B, S, heads, d).transpose(0, 2, 1, 3)
                     for m in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + adder
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ val
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, S, H)
        x = _ln(dense(ctx, "attention/output/dense") + x, v[p + "attention/output/LayerNorm/gamma"],
                v[p + "attention/output/LayerNorm/beta"])
        h = _gelu(dense(x, "intermediate/dense"))
        x = _ln(dense(h, "output/dense") + x, v[p + "output/LayerNorm/gamma"], v[p + "output/LayerNorm/beta"])
    pooled = np.tanh(x[:, 0] @ v["bert/pooler/dense/kernel"] + v["bert/pooler/dense/bias"])
    return x, pooled


def _inputs(seed=0, B=3, S=7, V=30):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, S))
    segs = (np.arange(S)[None] >= 4).astype(np.int64).repeat(B, 0)
    mask = np.ones((B, S), np.int64)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return ids, segs, mask


def test_pretraining_model_matches_tf_reference():
    from bertperf.model import BertForPreTraining

    model = tfc.load_tf_pretrained(BertForPreTraining, str(FIX / "pretrain"), hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0).double().eval()
    assert model.loading_info == {"initialized": [], "dropped": []}
    v = expected("pretrain")
    ids, segs, mask = _inputs()
    seq, pooled = reference_forward(v, ids, segs, mask, layers=2, heads=2)
    with torch.no_grad():
        out = model.bert(torch.from_numpy(ids), torch.from_numpy(segs), torch.from_numpy(mask))
        pt = model(torch.from_numpy(ids), torch.from_numpy(segs), torch.from_numpy(mask))
    valid = mask.astype(bool)
    np.testing.assert_allclose(out.last_hidden_state.numpy()[valid], seq[valid], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out.pooler_output.numpy(), pooled, rtol=1e-9, atol=1e-9)
    # heads: NSP = pooled @ output_weights^T + bias; MLM bias and transform as Google's get_masked_lm_output
    np.testing.assert_allclose(pt.nsp_logits.numpy(), pooled @ v["cls/seq_relationship/output_weights"].T
                               + v["cls/seq_relationship/output_bias"], rtol=1e-9, atol=1e-9)
    t = _gelu(seq @ v["cls/predictions/transform/dense/kernel"] + v["cls/predictions/transform/dense/bias"])
    t = _ln(t, v["cls/predictions/transform/LayerNorm/gamma"], v["cls/predictions/transform/LayerNorm/beta"])
    mlm = t @ v["bert/embeddings/word_embeddings"].T + v["cls/predictions/output_bias"]
    np.testing.assert_allclose(pt.mlm_logits.numpy()[valid], mlm[valid], rtol=1e-8, atol=1e-8)


def test_classifier_checkpoint_picks_the_checkpoint_file_choice():
    from bertperf.model import BertForSequenceClassification

    ck = tfc.find_tf_checkpoint(str(FIX / "classifier"))
    assert ck.prefix.endswith("model.ckpt-3") and ck.vocab.endswith("vocab.txt")
    model = tfc.load_tf_pretrained(BertForSequenceClassification, str(FIX / "classifier"))
    v = expected("classifier")
    assert model.classifier.weight.shape == (3, 8)
    np.testing.assert_array_equal(model.classifier.weight.detach().numpy(), v["output_weights"])
    np.testing.assert_array_equal(model.classifier.bias.detach().numpy(), v["output_bias"])
    np.testing.assert_array_equal(model.bert.pooler.weight.detach().numpy(), v["bert/pooler/dense/kernel"].T)
    # q | k | v fused in that order, each kernel transposed
    qkv = model.bert.layers[0].qkv.weight.detach().numpy()
    for i, m in enumerate(("query", "key", "value")):
        np.testing.assert_array_equal(qkv[i * 8:(i + 1) * 8], v[f"bert/encoder/layer_0/attention/self/{m}/kernel"].T)


def test_pretraining_checkpoint_into_a_classifier_initialises_the_head():
    from bertperf.model import BertForSequenceClassification

    model = tfc.load_tf_pretrained(BertForSequenceClassification, str(PRE), num_labels=4)
    assert model.loading_info == {"initialized": ["classifier"], "dropped": ["mlm", "nsp"]}
    np.testing.assert_array_equal(model.bert.embeddings.word.weight.detach().numpy(),
                                  expected("pretrain")["bert/embeddings/word_embeddings"])


def _copy(tmp_path, which="pretrain"):
    d = tmp_path / which
    shutil.copytree(FIX / which, d)
    return d


def test_corrupt_data_is_caught_by_crc(tmp_path):
    d = _copy(tmp_path)
    data = d / "bert_model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(BertperfError, match="crc32c"):
        tfc.read_tf_checkpoint(str(d / "bert_model.ckpt"))


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "magic"),
    (lambda b: b[:20], "shorter than a table footer"),
    (lambda b: b[:10] + bytes([b[10] ^ 0xFF]) + b[11:], "crc32c"),
])
def test_corrupt_index(tmp_path, damage, match):
    d = _copy(tmp_path)
    idx = d / "bert_model.ckpt.index"
    idx.write_bytes(damage(idx.read_bytes()))
    with pytest.raises(BertperfError, match=match):
        tfc.read_tf_checkpoint(str(d / "bert_model.ckpt"))


def test_missing_pieces(tmp_path):
    d = _copy(tmp_path)
    (d / "bert_model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(BertperfError, match="data shard not found"):
        tfc.read_tf_checkpoint(str(d / "bert_model.ckpt"))
    (d / "bert_config.json").unlink()
    with pytest.raises(BertperfError, match="no bert_config.json"):
        tfc.find_tf_checkpoint(str(d))
    assert tfc.find_tf_checkpoint(str(tmp_path / "nothing")) is None
    with pytest.raises(BertperfError, match="not found"):
        tfc.read_tf_checkpoint(str(tmp_path / "nothing" / "x.ckpt"))


def test_ambiguous_directory(tmp_path):
    d = _copy(tmp_path, "classifier")
    (d / "checkpoint").unlink()
    with pytest.raises(BertperfError, match="several TF checkpoints"):
        tfc.find_tf_checkpoint(str(d))
    assert tfc.find_tf_checkpoint(str(d / "model.ckpt-1")).prefix.endswith("model.ckpt-1")


def test_unknown_variable_names_are_listed():
    with pytest.raises(BertperfError, match="no known BERT layout: model/dense/kernel"):
        tfc.tf_to_hf_state({"model/dense/kernel": np.zeros((2, 2), np.float32),
                            "bert/pooler/dense/bias/adam_m": np.zeros(2, np.float32)})


def test_config_mismatch_is_an_error(tmp_path):
    from bertperf.model import BertForPreTraining
    import json

    d = _copy(tmp_path)
    cfg = json.loads((d / "bert_config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (d / "bert_config.json").write_text(json.dumps(cfg))
    with pytest.raises(BertperfError, match="does not fit"):
        tfc.load_tf_pretrained(BertForPreTraining, str(d))
