"""Reading inputs: sentence splitting, input kinds, WikiExtractor on the real dump."""
from __future__ import annotations

import bz2
import gzip
import html
from pathlib import Path

import pytest

from bertperf.data.extract import (TEXT, WIKIEXTRACTOR, XML, detect_kind, parse_plain_text, parse_wikiextractor,
                                   read_documents, run_wikiextractor, split_sentences)
from bertperf.utils.errors import BertperfError


@pytest.mark.parametrize("text,expected", [
    ("Dr. Smith went to Washington. He arrived at 3.45 on Monday.",
     ["Dr. Smith went to Washington.", "He arrived at 3.45 on Monday."]),
    ("Fruit, e.g. Apples and pears, i.e. Pomes, are sold. Prices vary.",
     ["Fruit, e.g. Apples and pears, i.e. Pomes, are sold.", "Prices vary."]),
    ("The U.S. Army was there. The U.S. is large.", ["The U.S. Army was there.", "The U.S. is large."]),
    ("He moved to the U.S. The next year he left.", ["He moved to the U.S.", "The next year he left."]),
    ("J. R. R. Tolkien wrote it. John F. Kennedy read it.", ["J. R. R. Tolkien wrote it.", "John F. Kennedy read it."]),
    ("Pi is about 3.14159. It is irrational.", ["Pi is about 3.14159.", "It is irrational."]),
    ("See No. 5 and pp. 12-14 of Vol. 2. Then stop.", ["See No. 5 and pp. 12-14 of Vol. 2.", "Then stop."]),
    ("Apples, pears, etc. The rest is fine.", ["Apples, pears, etc.", "The rest is fine."]),
    ("Smith et al. Found it in Jan. 1950 near St. Louis.", ["Smith et al. Found it in Jan. 1950 near St. Louis."]),
    ('He said "Stop!" Then he left. Why? Nobody knows!', ['He said "Stop!"', "Then he left.", "Why?", "Nobody knows!"]),
    ('"Why?" he asked. (This is quoted.) Next...  And more.',
     ['"Why?" he asked.', "(This is quoted.)", "Next...", "And more."]),
    ("Prof. Mr. Mrs. Ms. Gen. Lt. Col. Brown arrived.", ["Prof. Mr. Mrs. Ms. Gen. Lt. Col. Brown arrived."]),
    ("It was approx. five km. it continued.", ["It was approx. five km. it continued."]),
    ("Born c. 1900. Died 1950.", ["Born c. 1900.", "Died 1950."]),
    ("The year 1990. 1991 was worse.", ["The year 1990.", "1991 was worse."]),
    ("Élan vital. Über alles.", ["Élan vital.", "Über alles."]),
    ("  ", []),
    ("No final punctuation", ["No final punctuation"]),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_real_dump_through_wikiextractor(enwiki_bz2, tmp_path: Path):
    """The real sample: ~106 articles; on every real paragraph the sentences are the paragraph cut
    at whitespace (no character lost or reordered)."""
    run_wikiextractor(str(enwiki_bz2), str(tmp_path), processes=2, quiet=True)
    docs = list(read_documents([tmp_path]))
    assert 100 <= len(docs) <= 106  # 106 articles extracted, the empty ones skipped
    assert docs[0][0] == ("Anarchism is a political philosophy that advocates self-governed societies "
                          "based on voluntary institutions.")
    paragraphs = [html.unescape(line.strip()) for f in sorted(tmp_path.rglob("wiki_*"))
                  for line in f.read_text(encoding="utf-8").splitlines() if line and not line.startswith("<")]
    pieces = 0
    for par in paragraphs:
        sentences = split_sentences(par)
        assert " ".join(sentences).split() == par.split()
        pieces += len(sentences)
    assert sum(len(d) for d in docs) > 10_000
    assert pieces > 1.5 * len(paragraphs)  # paragraphs really get split


def test_parse_wikiextractor_blocks():
    lines = ['<doc id="1" url="u" title="A &amp; B">', "A &amp; B", "",
             "First para. Second sentence.", "Q&amp;A is fun.", "</doc>",
             '<doc id="2" url="u" title="Empty">', "Empty", "", "</doc>",
             '<doc id="3" url="u" title="C">', "C", "", "Only one.", "</doc>"]
    docs = list(parse_wikiextractor(lines))
    assert docs == [["First para.", "Second sentence.", "Q&A is fun."], ["Only one."]]


def test_parse_plain_text():
    lines = ["\n", "s1\n", "s2\n", "\n", "\n", "t1\n", "  \n", "u1\n", "u2"]
    assert list(parse_plain_text(lines)) == [["s1", "s2"], ["t1"], ["u1", "u2"]]


def test_detect_kind_and_compressed_text(tmp_path: Path, enwiki_bz2):
    assert detect_kind(str(enwiki_bz2)) == XML
    doc = tmp_path / "wiki_00"
    doc.write_text('<doc id="1" url="u" title="T">\nT\n\nHello there. Bye now.\n</doc>\n')
    assert detect_kind(str(doc)) == WIKIEXTRACTOR
    for opener, name in ((bz2.open, "t.txt.bz2"), (gzip.open, "t.txt.gz")):
        with opener(tmp_path / name, "wt", encoding="utf-8") as f:
            f.write("One sentence.\nTwo sentences.\n\nOther doc.\n")
        assert detect_kind(str(tmp_path / name)) == TEXT
        assert list(read_documents([tmp_path / name])) == [["One sentence.", "Two sentences."], ["Other doc."]]
    (tmp_path / "dir" / "AA").mkdir(parents=True)
    (tmp_path / "dir" / "AA" / "wiki_00").write_text(doc.read_text())
    assert list(read_documents([tmp_path / "dir"])) == [["Hello there.", "Bye now."]]


@pytest.mark.parametrize("name,content,words", [
    ("page.xml", b"just some words\n", "not a MediaWiki XML dump"),
    ("other.xml", b'<?xml version="1.0"?>\n<html><body/></html>\n', "not a MediaWiki XML dump"),
    ("dump.xml.bz2", b"BZh9 this is not bzip2 data" * 20, "unreadable"),
    ("blob.txt", b"abc\x00\x01\x02" * 50, "binary"),
])
def test_bad_inputs(tmp_path: Path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BertperfError, match=words) as e:
        list(read_documents([path]))
    assert str(path) in str(e.value)
    with pytest.raises(BertperfError, match="not found"):
        detect_kind(str(tmp_path / "missing.xml.bz2"))


def test_non_utf8_lines_are_skipped_and_counted(tmp_path: Path):
    from bertperf.data.extract import ReadStats

    path = tmp_path / "corpus.txt"
    path.write_bytes(b"Good one.\n\xff\xfe\xfa bad utf-8 \xc3\x28\nGood two.\n\n\xc3\x28\n\nLast doc.\n")
    stats = ReadStats()
    assert list(read_documents([path], stats=stats)) == [["Good one.", "Good two."], ["Last doc."]]
    assert stats == ReadStats(non_utf8_lines=2)


def test_malformed_and_empty_doc_blocks_are_counted():
    from bertperf.data.extract import ReadStats, parse_wikiextractor_raw, split_document

    lines = ['<doc id="1" url="u" title="A">', "A", "", "Cut short. No end.",  # no </doc>: cut by the next
             '<doc id="2" url="u" title="B">', "B", "", "Kept. Fine.", "</doc>",
             "stray text", "</doc>",  # an end without a start
             '<doc id="3" url="u" title="C">', "C", "", "</doc>",  # empty
             '<doc id="4" url="u" title="D">', "D", "", "Unfinished."]  # end of input
    stats = ReadStats()
    docs = [split_document(d) for d in parse_wikiextractor_raw(lines, stats=stats)]
    assert docs == [["Kept.", "Fine."]]
    assert stats == ReadStats(malformed_pages=3, empty_documents=1)
