"""Input text for pre-training: Wikipedia dumps, WikiExtractor output, Google's plain text, Chinese.

Readers yield documents in input order, either raw (`RawDocument`: paragraphs still to split, or
sentences) or split into sentences (`list[str]`, no empty strings). Input kinds are recognised
from the content (after bz2/gzip decompression):

* a MediaWiki XML dump (`<mediawiki ...>`, `.xml`, `.xml.bz2`): text is extracted by the
  `wikiextractor` package in a subprocess writing to a pipe (`-o -`), read while it runs
  (streaming: no temporary files, bounded memory), then read as below;
* WikiExtractor output (`<doc id=... title=...>` blocks, a file or a directory of them): the title
  line is dropped, HTML entities are unescaped, every paragraph line is split into sentences
  (`split_paragraph`: English rules, or Chinese rules for Chinese text), and documents without
  text (stubs) are skipped;
* Google's plain text (anything else): one sentence per line, blank lines between documents, as
  `create_pretraining_data.py` reads it; lines are kept as they are (Chinese lines are split on
  Chinese end punctuation, see `bertperf.data.chinese`).

Bad input inside a file is skipped and counted in a `ReadStats`, never fatal: lines that are not
UTF-8, WikiExtractor blocks without an end, blocks without text. Unusable inputs (missing,
binary, corrupt archive, `.xml` that is not a MediaWiki dump, wikiextractor failing) raise
`BertperfError` naming the file.
"""
from __future__ import annotations

import bz2
import gzip
import html
import io
import logging
import os
import re
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, fields
from typing import IO, Iterable, Iterator, NamedTuple

from bertperf.data.chinese import looks_chinese, split_sentences_zh
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

Document = list[str]  # the sentences of one document

XML, WIKIEXTRACTOR, TEXT = "xml", "wikiextractor", "text"

# ---------------------------------------------------------------------------------------------
# Sentence splitting (no nltk here): a boundary is [.!?] (plus closing quotes/brackets) followed
# by whitespace and a capital letter, digit or opening quote/bracket, unless the word before the
# period is an abbreviation, an initial or a dotted acronym.
# ---------------------------------------------------------------------------------------------

# Never end a sentence (titles, Latin, common short forms); compared lower-cased, without the final ".".
ABBREVIATIONS = frozenset("""
mr mrs ms messrs dr prof sr jr st mt ft rev fr hon gen col lt maj capt cmdr sgt cpl adm gov sen rep pres
supt insp det atty esq mme mlle
e.g i.e cf viz al vs v approx ca c ed eds trans repr comp
inc ltd corp co bros assn dept univ est
jan feb mar apr jun jul aug sep sept oct nov dec
mon tue tues wed thu thur thurs fri sat sun
""".split())
# End a sentence unless a number follows ("No. 5", "pp. 12", "Fig. 3", "Vol. 2").
NUMERIC_ABBREVIATIONS = frozenset("no nos nr p pp vol vols fig figs ch chap sec sect art op para pt eq".split())
# Abbreviations that often end a sentence: split when a capital follows.
SENTENCE_FINAL_ABBREVIATIONS = frozenset("etc".split())
# After a dotted acronym ("U.S.", "U.K.", "Ph.D.") split only before these common sentence starters.
SENTENCE_STARTERS = frozenset("""
The A An In On At It Its He She They We I This That These Those There Their His Her Our After Before
During When While Although However But And As Since Despite Many Most Some Other Others Such Both
""".split())

_CANDIDATE = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019\u00bb)\]]*\s+")
_OPENERS = "\"'\u201c\u2018\u00ab([{"
_INITIAL = re.compile(r"[A-Za-z]")
_DOTTED = re.compile(r"(?:[A-Za-z]{1,3}\.)+[A-Za-z]{1,3}")


def _starts_sentence(rest: str) -> bool:
    """True when `rest` (the text after the whitespace) starts like a sentence."""
    s = rest.lstrip(_OPENERS)
    return bool(s) and (s[0].isupper() or s[0].isdigit())


def _is_boundary(text: str, punct_start: int, punct: str, rest: str) -> bool:
    """Decide whether the punctuation `punct` at `text[punct_start]` ends a sentence."""
    if not _starts_sentence(rest):
        return False
    if punct != ".":
        return True  # "!", "?", "...", "?!"
    before = text[max(0, punct_start - 40):punct_start].split()  # bounded: no quadratic slicing
    word = before[-1].lstrip(_OPENERS) if before else ""
    low = word.lower()
    if not word:
        return True
    if low in ABBREVIATIONS:
        return False
    if low in NUMERIC_ABBREVIATIONS:
        return not rest.lstrip(_OPENERS)[:1].isdigit()
    if low in SENTENCE_FINAL_ABBREVIATIONS:
        return True
    if _INITIAL.fullmatch(word):
        return False  # "John F. Kennedy", "J. R. R. Tolkien"
    if _DOTTED.fullmatch(word):  # "U.S", "e.g", "Ph.D" (the final "." is the candidate)
        return rest.split(None, 1)[0].strip(_OPENERS + ",;:") in SENTENCE_STARTERS
    return True


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences; whitespace-only pieces are dropped.

    Handles abbreviations ("e.g.", "Dr.", "etc." mid-sentence), initials ("J. R. R. Tolkien"),
    dotted acronyms ("U.S."), decimals and numbers ("3.14", "No. 5"), and closing quotes or
    brackets after the final punctuation. A lowercase word after a period never starts a sentence.
    """
    sentences: list[str] = []
    start = 0
    for m in _CANDIDATE.finditer(text):
        end_punct = m.group().rstrip()
        punct = end_punct.rstrip("\"'\u201d\u2019\u00bb)]")
        if _is_boundary(text, m.start(), punct, text[m.end():]):
            piece = text[start:m.start() + len(end_punct)].strip()
            if piece:
                sentences.append(piece)
            start = m.end()
    piece = text[start:].strip()
    if piece:
        sentences.append(piece)
    return sentences


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

@dataclass
class ReadStats:
    """Bad input met while reading, skipped and counted (reported in prepare_summary.json).

    `non_utf8_lines`: lines that are not valid UTF-8 (the whole line is dropped);
    `malformed_pages`: WikiExtractor `<doc>` blocks without their end (or an end without a start);
    `empty_documents`: `<doc>` blocks without any text (stubs, lists that wikiextractor emptied).
    """

    non_utf8_lines: int = 0
    malformed_pages: int = 0
    empty_documents: int = 0

    def add(self, other: "ReadStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class RawDocument(NamedTuple):
    """One document before sentence splitting: `lines` are paragraphs to split into sentences
    (`paragraphs=True`, WikiExtractor output) or sentences already (Google's plain text)."""

    lines: list[str]
    paragraphs: bool


ENGLISH, CHINESE, AUTO = "en", "zh", "auto"
LANGUAGES = (AUTO, ENGLISH, CHINESE)


def split_paragraph(text: str, language: str = AUTO) -> list[str]:
    """Sentences of one paragraph: Chinese rules (`chinese.split_sentences_zh`) for "zh" or, with
    "auto", when at least 30% of the characters are CJK; English rules (`split_sentences`) otherwise."""
    if language == CHINESE or (language == AUTO and looks_chinese(text)):
        return split_sentences_zh(text)
    return split_sentences(text)


def split_document(doc: RawDocument, language: str = AUTO) -> Document:
    """Sentences of a raw document. Paragraphs are split with `split_paragraph`; Google-format lines
    are kept as they are, except that Chinese lines are split on Chinese end punctuation."""
    out: Document = []
    if doc.paragraphs:
        for par in doc.lines:
            out.extend(split_paragraph(par, language))
        return out
    if language == ENGLISH:
        return list(doc.lines)
    for line in doc.lines:
        if language == CHINESE or looks_chinese(line):
            out.extend(split_sentences_zh(line))
        else:
            out.append(line)
    return out


def open_text(path: str) -> IO[str]:
    """Open a (possibly .bz2/.gz compressed) UTF-8 text file; errors become BertperfError."""
    try:
        if path.endswith(".bz2"):
            return bz2.open(path, "rt", encoding="utf-8")
        if path.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8")
        return open(path, "rt", encoding="utf-8")
    except OSError as e:
        raise BertperfError(f"{path}: cannot open input ({e.strerror or e})") from None


def open_binary(path: str) -> IO[bytes]:
    """Open a (possibly .bz2/.gz compressed) file for reading bytes; errors become BertperfError."""
    try:
        if path.endswith(".bz2"):
            return bz2.open(path, "rb")
        if path.endswith(".gz"):
            return gzip.open(path, "rb")
        return open(path, "rb")
    except OSError as e:
        raise BertperfError(f"{path}: cannot open input ({e.strerror or e})") from None


def decode_lines(lines: Iterable[bytes], stats: ReadStats) -> Iterator[str]:
    """UTF-8 lines of a byte stream; a line that does not decode is dropped and counted."""
    for raw in lines:
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            stats.non_utf8_lines += 1


def _read_head(path: str, size: int = 4096) -> str:
    try:
        with open_binary(path) as f:
            head = f.read(size)
    except (OSError, EOFError) as e:
        raise BertperfError(f"{path}: unreadable input ({e.__class__.__name__}: {e}); give a Wikipedia XML dump "
                            "(.xml/.bz2), WikiExtractor output or UTF-8 text") from None
    return head.decode("utf-8", errors="replace")


def detect_kind(path: str) -> str:
    """Return XML, WIKIEXTRACTOR or TEXT for a file; BertperfError when it cannot be used."""
    if not os.path.isfile(path):
        raise BertperfError(f"{path}: input file not found")
    head = _read_head(path)
    if "\x00" in head:
        raise BertperfError(f"{path}: binary data, not text; give a Wikipedia XML dump (.xml/.bz2), "
                            "WikiExtractor output or UTF-8 text")
    stripped = head.lstrip("\ufeff \t\r\n")
    base = path[:-4] if path.endswith(".bz2") else path[:-3] if path.endswith(".gz") else path
    if re.match(r"(<\?xml[^>]*>\s*)?<mediawiki[\s>]", stripped):
        return XML
    if base.endswith(".xml") or stripped.startswith("<?xml"):
        raise BertperfError(f"{path}: not a MediaWiki XML dump (no <mediawiki> root element); use a "
                            "pages-articles dump such as enwiki-latest-pages-articles.xml.bz2")
    if re.match(r"<doc[\s>]", stripped):
        return WIKIEXTRACTOR
    return TEXT


_DOC_START = re.compile(r"<doc\b[^>]*>\s*$")


def parse_wikiextractor_raw(lines: Iterable[str], where: str = "<input>",
                            stats: ReadStats | None = None) -> Iterator[RawDocument]:
    """Raw documents (paragraph lists) from WikiExtractor `<doc ...>` ... `</doc>` blocks.

    The first non-empty line of a block is the title (dropped); every other non-empty line is a
    paragraph, HTML-unescaped. Blocks without text are skipped (`stats.empty_documents`); a block
    cut by another `<doc>`, by the end of the input, or an `</doc>` without a start is skipped
    (`stats.malformed_pages`).
    """
    stats = stats if stats is not None else ReadStats()
    inside = False
    title_pending = False
    doc: list[str] = []
    for line in lines:
        line = line.rstrip("\r\n")
        if _DOC_START.match(line):
            if inside:
                stats.malformed_pages += 1
            inside, title_pending, doc = True, True, []
            continue
        if line.startswith("</doc>"):
            if not inside:
                stats.malformed_pages += 1
            elif doc:
                yield RawDocument(doc, True)
            else:
                stats.empty_documents += 1
            inside = False
            continue
        if not inside:
            continue
        text = html.unescape(line).strip()
        if not text:
            continue
        if title_pending:  # WikiExtractor repeats the title as the first line
            title_pending = False
            continue
        doc.append(text)
    if inside:
        stats.malformed_pages += 1
        log.warning("%s: last <doc> block has no </doc>; it was dropped", where)


def parse_wikiextractor(lines: Iterable[str], where: str = "<input>") -> Iterator[Document]:
    """Documents (sentence lists) from WikiExtractor blocks (see `parse_wikiextractor_raw`);
    paragraphs are split with `split_paragraph`. Documents with no sentence are skipped."""
    for raw in parse_wikiextractor_raw(lines, where):
        doc = split_document(raw)
        if doc:
            yield doc


def parse_plain_text_raw(lines: Iterable[str]) -> Iterator[RawDocument]:
    """Raw documents from Google's format: one sentence per line, blank line between documents."""
    doc: list[str] = []
    for line in lines:
        line = line.strip()
        if line:
            doc.append(line)
        elif doc:
            yield RawDocument(doc, False)
            doc = []
    if doc:
        yield RawDocument(doc, False)


def parse_plain_text(lines: Iterable[str]) -> Iterator[Document]:
    """Documents from Google's format: one sentence per line, blank line between documents."""
    for raw in parse_plain_text_raw(lines):
        yield raw.lines


def _read_file(path: str, kind: str, stats: ReadStats) -> Iterator[RawDocument]:
    try:
        with open_binary(path) as f:
            lines = decode_lines(f, stats)
            if kind == WIKIEXTRACTOR:
                yield from parse_wikiextractor_raw(lines, where=path, stats=stats)
            else:
                yield from parse_plain_text_raw(lines)
    except (OSError, EOFError) as e:
        raise BertperfError(f"{path}: unreadable input ({e.__class__.__name__}: {e})") from None


def _wikiextractor_files(directory: str) -> list[str]:
    """Files under a WikiExtractor output directory (AA/wiki_00, ... possibly .bz2), sorted."""
    files = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return files


def _wikiextractor_cmd(dump: str, out: str, processes: int) -> list[str]:
    return [sys.executable, "-m", "wikiextractor.WikiExtractor", dump, "-o", out,
            "--processes", str(max(1, processes)), "-b", "100M"]


def _drain(stream: IO[str], tail: deque, quiet: bool) -> None:
    for line in stream:
        line = line.rstrip()
        if line:
            tail.append(line)
            if not quiet:
                log.info("wikiextractor: %s", line)


def run_wikiextractor(dump: str, out_dir: str, processes: int = 2, quiet: bool = False) -> None:
    """Run `python -m wikiextractor.WikiExtractor dump -o out_dir` and check that it worked.

    Its progress lines are forwarded to this module's logger unless `quiet`.
    Raises BertperfError (with wikiextractor's last message) when it fails.
    """
    log.info("extracting %s with wikiextractor (%d processes)", dump, processes)
    tail: deque[str] = deque(maxlen=5)
    proc = subprocess.Popen(_wikiextractor_cmd(dump, out_dir, processes), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    assert proc.stderr is not None
    _drain(proc.stderr, tail, quiet)
    rc = proc.wait()
    if rc != 0:
        last = tail[-1] if tail else f"exit code {rc}"
        raise BertperfError(f"{dump}: wikiextractor failed ({last}); is it a complete, uncorrupted dump?")


def stream_wikiextractor(dump: str, processes: int = 2, quiet: bool = False,
                         stats: ReadStats | None = None) -> Iterator[RawDocument]:
    """Raw documents of an XML dump as wikiextractor produces them (`-o -`: its output is read from
    a pipe while it runs, so nothing is stored on disk and memory stays bounded; wikiextractor's
    own --processes extract pages in parallel and it writes them in dump order).

    Raises BertperfError, after the documents extracted before the failure, when wikiextractor fails.
    Closing the generator early terminates the subprocess.
    """
    stats = stats if stats is not None else ReadStats()
    log.info("extracting %s with wikiextractor (%d processes), streaming", dump, processes)
    tail: deque[str] = deque(maxlen=5)
    proc = subprocess.Popen(_wikiextractor_cmd(dump, "-", processes), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=False)
    assert proc.stdout is not None and proc.stderr is not None
    err = io.TextIOWrapper(proc.stderr, encoding="utf-8", errors="replace")
    drain = threading.Thread(target=_drain, args=(err, tail, quiet), daemon=True)
    drain.start()
    finished = False
    try:
        yield from parse_wikiextractor_raw(decode_lines(proc.stdout, stats), where=dump, stats=stats)
        finished = True
    finally:
        if not finished and proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        rc = proc.wait()
        drain.join(timeout=10)
    if rc != 0:
        last = tail[-1] if tail else f"exit code {rc}"
        raise BertperfError(f"{dump}: wikiextractor failed ({last}); is it a complete, uncorrupted dump?")


def read_raw_documents(paths: Iterable[str], processes: int = 2, quiet: bool = False,
                       stats: ReadStats | None = None) -> Iterator[RawDocument]:
    """Raw documents of all inputs, in order (see the module docstring for the input kinds).
    Bad lines and pages are skipped and counted in `stats`."""
    stats = stats if stats is not None else ReadStats()
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            files = _wikiextractor_files(path)
            if not files:
                raise BertperfError(f"{path}: empty directory; expected WikiExtractor output (AA/wiki_00, ...)")
            for f in files:
                yield from _read_file(f, detect_kind(f), stats)
            continue
        kind = detect_kind(path)
        if kind == XML:
            yield from stream_wikiextractor(path, processes=processes, quiet=quiet, stats=stats)
        else:
            yield from _read_file(path, kind, stats)


def read_documents(paths: Iterable[str], processes: int = 2, quiet: bool = False, language: str = AUTO,
                   stats: ReadStats | None = None) -> Iterator[Document]:
    """All documents (sentence lists) of all inputs, in order; documents without a sentence are skipped."""
    for raw in read_raw_documents(paths, processes=processes, quiet=quiet, stats=stats):
        doc = split_document(raw, language)
        if doc:
            yield doc
