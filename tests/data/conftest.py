"""Fixtures for the data tests: a slice of the real Wikipedia sample and one shard set built from it
(once per session) by `bertperf prepare`, plus the same text tokenized independently."""
from __future__ import annotations

import bz2
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SAMPLE_PAGES = 80  # of the 206 pages in the real dump sample (~15 articles; half the pages are redirects)
SEQ, PRED, DUPE, PER_SHARD, SEED = 128, 20, 2, 1500, 4321


def write_dump_slice(src: Path, dst: Path, pages: int) -> Path:
    """The first `pages` <page> elements of a MediaWiki dump, as a valid uncompressed dump."""
    text = bz2.open(src, "rt", encoding="utf-8").read()
    end = 0
    for _ in range(pages):
        end = text.index("</page>", end) + len("</page>")
    dst.write_text(text[:end] + "\n</mediawiki>\n", encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def sample_xml(enwiki_bz2: Path, tmp_path_factory) -> Path:
    """Real MediaWiki XML: the first SAMPLE_PAGES pages of the sample dump."""
    return write_dump_slice(enwiki_bz2, tmp_path_factory.mktemp("xml") / "enwiki-slice.xml", SAMPLE_PAGES)


def prepare_args(inp: Path, vocab: Path, out: Path, *extra: str) -> list[str]:
    return ["--input", str(inp), "--vocab", str(vocab), "--output_dir", str(out), "--quiet",
            "--max_seq_length", str(SEQ), "--max_predictions_per_seq", str(PRED), "--dupe_factor", str(DUPE),
            "--instances_per_shard", str(PER_SHARD), *extra]


@dataclass
class ShardSet:
    dir: Path
    files: list[Path]
    arrays: dict[str, np.ndarray]  # all shards concatenated
    docs: list[list[int]]  # token ids of each document of the input (sentences joined)


@pytest.fixture(scope="session")
def sample_documents(sample_xml: Path) -> list[list[str]]:
    """Sentences of each document of the XML slice (wikiextractor + sentence splitting)."""
    from bertperf.data.extract import read_documents

    return list(read_documents([sample_xml], quiet=True))


@pytest.fixture(scope="session")
def shard_set(sample_xml: Path, sample_documents, vocab_file: Path, tmp_path_factory) -> ShardSet:
    """`bertperf prepare` on the real XML slice (seed SEED), read back, and the corpus token streams."""
    from bertperf.data.prepare import main
    from bertperf.data.shards import SCHEMA, read_shard
    from bertperf.data.tokenize import WordPieceTokenizer

    out = tmp_path_factory.mktemp("shards")
    assert main(prepare_args(sample_xml, vocab_file, out, "--random_seed", str(SEED))) == 0
    files = sorted(out.glob("*.hdf5"))
    parts = [read_shard(f, vocab_size=30522) for f in files]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in SCHEMA}
    tok = WordPieceTokenizer(vocab_file, lower_case=True)
    docs = [[t for s in tok.encode_batch(d) for t in s] for d in sample_documents]
    return ShardSet(out, files, arrays, docs)
