"""Input text for pre-training: Wikipedia dumps, WikiExtractor output, or Google's plain text.

Every reader yields documents as lists of sentences (`list[str]`, no empty strings), in input
order. Three input kinds are recognised from the content (after bz2/gzip decompression):

* a MediaWiki XML dump (`<mediawiki ...>`, `.xml`, `.xml.bz2`): text is extracted by running the
  `wikiextractor` package in a subprocess, then read as below;
* WikiExtractor output (`<doc id=... title=...>` blocks, a file or a directory of them): the title
  line is dropped, HTML entities are unescaped, every paragraph line is split into sentences with
  `split_sentences`, and documents without text (redirects, stubs) are skipped;
* Google's plain text (anything else that decodes as UTF-8): one sentence per line, blank lines
  between documents, as `create_pretraining_data.py` reads it; lines are kept as they are.

Unreadable input (missing, undecodable, corrupt archive, `.xml` that is not a MediaWiki dump)
raises `BertperfError` naming the file.
"""
from __future__ import annotations

import bz2
import gzip
import html
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from typing import IO, Iterable, Iterator

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


def _read_head(path: str, size: int = 4096) -> str:
    try:
        with open_text(path) as f:
            return f.read(size)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise BertperfError(f"{path}: unreadable input ({e.__class__.__name__}: {e}); give a Wikipedia XML dump "
                            "(.xml/.bz2), WikiExtractor output or UTF-8 text") from None


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


def parse_wikiextractor(lines: Iterable[str], where: str = "<input>") -> Iterator[Document]:
    """Documents (sentence lists) from WikiExtractor `<doc ...>` ... `</doc>` blocks.

    The first line of a block is the title (dropped when it equals the title attribute or is the
    first line); every other non-empty line is a paragraph, unescaped and sentence-split.
    Documents with no sentence are skipped.
    """
    inside = False
    title_pending = False
    doc: Document = []
    for line in lines:
        line = line.rstrip("\n")
        if not inside:
            if _DOC_START.match(line):
                inside, title_pending, doc = True, True, []
            continue
        if line.startswith("</doc>"):
            inside = False
            if doc:
                yield doc
            continue
        text = html.unescape(line).strip()
        if not text:
            continue
        if title_pending:  # WikiExtractor repeats the title as the first line
            title_pending = False
            continue
        doc.extend(split_sentences(text))
    if inside:
        log.warning("%s: last <doc> block has no </doc>; it was dropped", where)


def parse_plain_text(lines: Iterable[str]) -> Iterator[Document]:
    """Documents from Google's format: one sentence per line, blank line between documents."""
    doc: Document = []
    for line in lines:
        line = line.strip()
        if line:
            doc.append(line)
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


def _read_file(path: str, kind: str) -> Iterator[Document]:
    try:
        with open_text(path) as f:
            if kind == WIKIEXTRACTOR:
                yield from parse_wikiextractor(f, where=path)
            else:
                yield from parse_plain_text(f)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise BertperfError(f"{path}: unreadable input ({e.__class__.__name__}: {e})") from None


def _wikiextractor_files(directory: str) -> list[str]:
    """Files under a WikiExtractor output directory (AA/wiki_00, ... possibly .bz2), sorted."""
    files = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return files


def run_wikiextractor(dump: str, out_dir: str, processes: int = 2, quiet: bool = False) -> None:
    """Run `python -m wikiextractor.WikiExtractor dump -o out_dir` and check that it worked.

    Its progress lines are forwarded to this module's logger unless `quiet`.
    Raises BertperfError (with wikiextractor's last message) when it fails.
    """
    cmd = [sys.executable, "-m", "wikiextractor.WikiExtractor", dump, "-o", out_dir,
           "--processes", str(max(1, processes)), "-b", "100M"]
    log.info("extracting %s with wikiextractor (%d processes)", dump, processes)
    tail: deque[str] = deque(maxlen=5)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            errors="replace")
    assert proc.stderr is not None
    for line in proc.stderr:
        line = line.rstrip()
        if line:
            tail.append(line)
            if not quiet:
                log.info("wikiextractor: %s", line)
    rc = proc.wait()
    if rc != 0:
        last = tail[-1] if tail else f"exit code {rc}"
        raise BertperfError(f"{dump}: wikiextractor failed ({last}); is it a complete, uncorrupted dump?")


def read_documents(paths: Iterable[str], processes: int = 2, quiet: bool = False) -> Iterator[Document]:
    """All documents of all inputs, in order. Each path is an XML dump, a WikiExtractor output
    file or directory, or a plain-text file (see the module docstring)."""
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            files = _wikiextractor_files(path)
            if not files:
                raise BertperfError(f"{path}: empty directory; expected WikiExtractor output (AA/wiki_00, ...)")
            for f in files:
                yield from _read_file(f, detect_kind(f))
            continue
        kind = detect_kind(path)
        if kind != XML:
            yield from _read_file(path, kind)
            continue
        with tempfile.TemporaryDirectory(prefix="bertperf-wikiextractor-") as tmp:
            run_wikiextractor(path, tmp, processes=processes, quiet=quiet)
            for f in _wikiextractor_files(tmp):
                yield from _read_file(f, WIKIEXTRACTOR)
