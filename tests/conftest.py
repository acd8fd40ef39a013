"""Shared fixtures: the real sample inputs `make setup` takes out of two PyPI wheels."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTPERF_DATA", REPO / ".data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make setup` (it takes the sample data out of PyPI wheels)")
    return path


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def enwiki_bz2() -> Path:
    """Real Wikipedia XML dump sample (206 pages), from the gensim 4.4.0 wheel."""
    return _need(DATA / "enwiki-sample.xml.bz2")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Real BERT checkpoint (all-MiniLM-L6-v2, HF layout: config.json, model.safetensors, vocab.txt)."""
    return _need(DATA / "minilm")


@pytest.fixture(scope="session")
def vocab_file(minilm_dir: Path) -> Path:
    """The bert-base-uncased vocab (30522 tokens)."""
    return _need(minilm_dir / "vocab.txt")
