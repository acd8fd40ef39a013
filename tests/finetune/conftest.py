"""Fixtures of the fine-tuning tests: the real tokenizer and real Wikipedia sentences."""
from __future__ import annotations

import pytest

from bertperf.finetune.common import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer(vocab_file):
    """bert-base-uncased WordPiece (the real vocab.txt), lower-cased as guessed from the vocab."""
    return load_tokenizer(vocab_file)


@pytest.fixture(scope="session")
def wiki_docs(enwiki_bz2):
    """The real Wikipedia sample as documents (lists of sentences), ~105 articles."""
    from bertperf.data.extract import read_documents

    docs = list(read_documents([str(enwiki_bz2)], quiet=True))
    assert len(docs) > 50
    return docs


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The models here are tiny: one thread is faster, and far faster when other processes share
    the 2 cores (OpenMP barriers of 2 threads stall under oversubscription). Restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
