"""Writes the tiny Google-style TF checkpoints of tests/convert/fixtures/tf_tiny/ (not a test).

Run with TensorFlow installed (a throwaway venv: `pip install tensorflow-cpu==2.20.0`); the
bertperf tests only read the files it writes, never TensorFlow:

    python scripts/make_tf_tiny_fixture.py tests/convert/fixtures/tf_tiny

pretrain/   bert_model.ckpt (BERT names of Google's run_pretraining.py: bert/..., cls/...), plus
            optimizer slots (adam_m, adam_v), global_step (int64) and two ignored EMA/Momentum
            slots stored as bfloat16 and float16 (to test dtype decoding), bert_config.json,
            vocab.txt, expected.npz (every variable's value as written, TF names)
classifier/ model.ckpt-1 and model.ckpt-3 with a `checkpoint` file naming model.ckpt-3 (as
            run_classifier.py leaves them): 1 layer, output_weights [3, H] / output_bias [3]
"""
import json
import os
import sys

import numpy as np
import tensorflow as tf

H, I, V, P, L = 8, 16, 30, 16, 2
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "film", "is", "good", "bad", "great",
         "awful", "very", "not", "movie", "plot", "fun", "dull", "it", "was", ".", ",", "and", "but", "so",
         "##s", "##ly", "we", "liked"]


def config(layers):
    return {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "hidden_size": H, "initializer_range": 0.02, "intermediate_size": I, "max_position_embeddings": P,
            "num_attention_heads": 2, "num_hidden_layers": layers, "type_vocab_size": 2, "vocab_size": V}


def bert_vars(rng, layers):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    v = {"bert/embeddings/word_embeddings": f(V, H), "bert/embeddings/position_embeddings": f(P, H),
         "bert/embeddings/token_type_embeddings": f(2, H),
         "bert/embeddings/LayerNorm/gamma": f(H), "bert/embeddings/LayerNorm/beta": f(H)}
    for n in range(layers):
        p = f"bert/encoder/layer_{n}/"
        for m in ("query", "key", "value"):
            v[p + f"attention/self/{m}/kernel"], v[p + f"attention/self/{m}/bias"] = f(H, H), f(H)
        v[p + "attention/output/dense/kernel"], v[p + "attention/output/dense/bias"] = f(H, H), f(H)
        v[p + "attention/output/LayerNorm/gamma"], v[p + "attention/output/LayerNorm/beta"] = f(H), f(H)
        v[p + "intermediate/dense/kernel"], v[p + "intermediate/dense/bias"] = f(H, I), f(I)
        v[p + "output/dense/kernel"], v[p + "output/dense/bias"] = f(I, H), f(H)
        v[p + "output/LayerNorm/gamma"], v[p + "output/LayerNorm/beta"] = f(H), f(H)
    v["bert/pooler/dense/kernel"], v["bert/pooler/dense/bias"] = f(H, H), f(H)
    return v


def save(prefix, variables):
    names = sorted(variables)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[n]) for n in names])
    back = tf.train.load_checkpoint(prefix)
    for n in names:  # TF reads back what we wrote
        got = back.get_tensor(n)
        want = variables[n].numpy() if hasattr(variables[n], "numpy") else variables[n]
        assert np.array_equal(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)), n


def main(out):
    rng = np.random.default_rng(20261123)
    d = os.path.join(out, "pretrain")
    os.makedirs(d, exist_ok=True)
    v = bert_vars(rng, L)
    v["cls/predictions/transform/dense/kernel"] = rng.standard_normal((H, H)).astype(np.float32)
    v["cls/predictions/transform/dense/bias"] = rng.standard_normal(H).astype(np.float32)
    v["cls/predictions/transform/LayerNorm/gamma"] = rng.standard_normal(H).astype(np.float32)
    v["cls/predictions/transform/LayerNorm/beta"] = rng.standard_normal(H).astype(np.float32)
    v["cls/predictions/output_bias"] = rng.standard_normal(V).astype(np.float32)
    v["cls/seq_relationship/output_weights"] = rng.standard_normal((2, H)).astype(np.float32)
    v["cls/seq_relationship/output_bias"] = rng.standard_normal(2).astype(np.float32)
    extra = {"bert/pooler/dense/kernel/adam_m": rng.standard_normal((H, H)).astype(np.float32),
             "bert/pooler/dense/kernel/adam_v": rng.random((H, H)).astype(np.float32),
             "global_step": np.array(1000, dtype=np.int64),
             "cls/seq_relationship/output_bias/ExponentialMovingAverage": np.array([1.5, -2.25], np.float32),
             "cls/seq_relationship/output_bias/Momentum": np.array([0.5, -0.125], np.float16)}
    tensors = {**v, **extra}
    tensors["cls/seq_relationship/output_bias/ExponentialMovingAverage"] = tf.cast(
        tf.constant(extra["cls/seq_relationship/output_bias/ExponentialMovingAverage"]), tf.bfloat16)
    save(os.path.join(d, "bert_model.ckpt"), tensors)
    np.savez(os.path.join(d, "expected.npz"), **{k.replace("/", "|"): a for k, a in {**v, **extra}.items()})
    json.dump(config(L), open(os.path.join(d, "bert_config.json"), "w"), indent=2)
    open(os.path.join(d, "vocab.txt"), "w").write("\n".join(VOCAB) + "\n")

    d = os.path.join(out, "classifier")
    os.makedirs(d, exist_ok=True)
    c = bert_vars(rng, 1)
    c["output_weights"] = rng.standard_normal((3, H)).astype(np.float32)
    c["output_bias"] = rng.standard_normal(3).astype(np.float32)
    c["bert/encoder/layer_0/output/dense/kernel/adam_m"] = np.zeros((I, H), np.float32)
    save(os.path.join(d, "model.ckpt-3"), c)
    stale = {k: a + 1 for k, a in c.items()}
    save(os.path.join(d, "model.ckpt-1"), stale)
    open(os.path.join(d, "checkpoint"), "w").write(
        'model_checkpoint_path: "model.ckpt-3"\nall_model_checkpoint_paths: "model.ckpt-1"\n'
        'all_model_checkpoint_paths: "model.ckpt-3"\n')
    np.savez(os.path.join(d, "expected.npz"), **{k.replace("/", "|"): a for k, a in c.items()})
    json.dump(config(1), open(os.path.join(d, "bert_config.json"), "w"), indent=2)
    open(os.path.join(d, "vocab.txt"), "w").write("\n".join(VOCAB) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
