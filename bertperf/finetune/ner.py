"""Named-entity recognition data: CoNLL-style files and CLUENER JSON, word-piece label alignment.

CoNLL (CoNLL-2003 and friends): one token per line, columns separated by whitespace, the word in
the first column and the tag in the last; a blank line ends a sentence; `-DOCSTART-` lines are
skipped. Tags are kept as they are (BIO / IOB1 both work with the conlleval-style metric).

CLUENER 2020 (`train.json`, `dev.json`, `test.json`): one JSON object per line,
`{"id"?, "text": "...", "label": {type: {entity_text: [[start, end], ...]}}}` with `end`
inclusive; each character becomes a word and gets a BIO tag (B-type on the first character).
An entity whose text is not `text[start:end+1]`, or two overlapping entities -> BertperfError.

Alignment (`encode_words`): words go through the fast tokenizer as pre-split input
(`is_pretokenized`), the first word piece of a word gets the word's label id, its other pieces,
[CLS], [SEP] and padding get -100 (ignored by the loss). Sentences longer than
max_seq_length - 2 word pieces are cut; the words cut off (and words with no word piece at all,
e.g. a space character in CLUENER text) are predicted "O" by `decode_predictions`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from bertperf.finetune.common import FastTokenizer, need_file
from bertperf.utils.atomic import atomic_write_text
from bertperf.finetune.metrics import bio_entities
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class Sentence:
    """Words and their tags (None when the file has no tags). `where`: 'file:line' of its start.
    `id`: the CLUENER id (or the sentence number)."""

    words: list[str]
    tags: list[str] | None
    where: str
    id: int | str = 0


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def read_conll(path: str | os.PathLike) -> list[Sentence]:
    """Sentences of a CoNLL-style file (see module doc). A token line with a single column ->
    BertperfError (the tag column is missing)."""
    path = need_file(path, "CoNLL file", "pass a file with one 'word ... tag' per line")
    out: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                if words:
                    out.append(Sentence(words, tags, f"{path}:{start}", len(out)))
                words, tags = [], []
                continue
            if len(cols) < 2:
                raise BertperfError(f"{path}:{n}: {line.strip()!r} has no tag column; CoNLL lines are "
                                    "'word [other columns] tag'")
            if not words:
                start = n
            words.append(cols[0])
            tags.append(cols[-1])
    if words:
        out.append(Sentence(words, tags, f"{path}:{start}", len(out)))
    return out


def cluener_to_bio(text: str, label: dict, where: str) -> list[str]:
    """Character BIO tags of one CLUENER record (see module doc)."""
    tags = ["O"] * len(text)
    if not isinstance(label, dict):
        raise BertperfError(f"{where}: field 'label' must be an object {{type: {{entity: [[start, end]]}}}}")
    for typ, ents in label.items():
        for ent, spans in ents.items():
            for span in spans:
                if not (isinstance(span, (list, tuple)) and len(span) == 2):
                    raise BertperfError(f"{where}: label.{typ}.{ent}: span {span!r} must be [start, end]")
                s, e = int(span[0]), int(span[1])
                if not (0 <= s <= e < len(text)) or text[s:e + 1] != ent:
                    raise BertperfError(f"{where}: label.{typ}: entity {ent!r} is not at [{s}, {e}] of the "
                                        f"text (found {text[s:e + 1]!r}); CLUENER spans are [start, end] "
                                        "with end inclusive")
                if any(t != "O" for t in tags[s:e + 1]):
                    raise BertperfError(f"{where}: label.{typ}: entity {ent!r} at [{s}, {e}] overlaps another "
                                        "entity; BIO tags cannot hold overlapping entities")
                tags[s] = f"B-{typ}"
                for i in range(s + 1, e + 1):
                    tags[i] = f"I-{typ}"
    return tags


def read_cluener(path: str | os.PathLike) -> list[Sentence]:
    """Sentences (one word per character) of a CLUENER JSON-lines file; tags None without 'label'."""
    path = need_file(path, "CLUENER file", "pass train.json / dev.json / test.json of CLUENER 2020")
    out: list[Sentence] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BertperfError(f"{where}: not a JSON object ({e}); CLUENER files hold one per line") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise BertperfError(f"{where}: field 'text' (a string) is missing")
            text = obj["text"]
            tags = cluener_to_bio(text, obj["label"], where) if "label" in obj else None
            out.append(Sentence(list(text), tags, where, obj.get("id", len(out))))
    return out


def label_list(sentences: Sequence[Sentence]) -> list[str]:
    """'O' then every other tag seen, sorted by (entity type, tag): e.g. O, B-LOC, I-LOC, B-PER..."""
    tags = {t for s in sentences for t in (s.tags or [])}
    tags.discard("O")
    return ["O"] + sorted(tags, key=lambda t: (t[2:], t))


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Arrays [N, S] int64: input_ids, segment_ids, input_mask, labels (-100 where ignored) and
    word_index (the word whose first piece sits at that position, -1 elsewhere)."""

    arrays: dict[str, np.ndarray]
    truncated_words: int = 0
    unlabelled_words: int = 0  # words without any word piece
    stats: dict = field(default_factory=dict)


def encode_words(
    tokenizer: FastTokenizer,
    sentences: Sequence[Sentence],
    label2id: dict[str, int] | None,
    max_seq_length: int,
) -> Encoded:
    """Word pieces of pre-split sentences with labels on each word's first piece (module doc).
    label2id None (or a sentence without tags): labels all -100. An unknown tag -> BertperfError."""
    n, S = len(sentences), max_seq_length
    arr = {k: np.zeros((n, S), dtype=np.int64) for k in ("input_ids", "segment_ids", "input_mask")}
    arr["labels"] = np.full((n, S), IGNORE_INDEX, dtype=np.int64)
    arr["word_index"] = np.full((n, S), -1, dtype=np.int64)
    if tokenizer.pad_id:
        arr["input_ids"][:] = tokenizer.pad_id
    encs = tokenizer.backend.encode_batch([s.words for s in sentences], is_pretokenized=True,
                                          add_special_tokens=False)
    truncated = unlabelled = 0
    for i, (sent, enc) in enumerate(zip(sentences, encs)):
        ids, wids = enc.ids[: S - 2], enc.word_ids[: S - 2]
        first_piece = {}
        for j, w in enumerate(wids):
            if w is not None and w not in first_piece:
                first_piece[w] = j
        all_words = {w for w in enc.word_ids if w is not None}
        truncated += len(all_words) - len(first_piece)
        unlabelled += len(sent.words) - len(all_words)
        row = [tokenizer.cls_id] + ids + [tokenizer.sep_id]
        arr["input_ids"][i, : len(row)] = row
        arr["input_mask"][i, : len(row)] = 1
        for w, j in first_piece.items():
            arr["word_index"][i, j + 1] = w
            if label2id is not None and sent.tags is not None:
                tag = sent.tags[w]
                if tag not in label2id:
                    raise BertperfError(f"{sent.where}: tag {tag!r} (word {w + 1}) is not in the training "
                                        f"label set {list(label2id)}; fix the tag or train on data that has it")
                arr["labels"][i, j + 1] = label2id[tag]
    if truncated:
        log.warning("%d words fell beyond max_seq_length=%d word pieces and will be predicted 'O'", truncated, S)
    return Encoded(arr, truncated, unlabelled)


def decode_predictions(
    pred_ids: np.ndarray, word_index: np.ndarray, sentences: Sequence[Sentence], id2label: Sequence[str]
) -> list[list[str]]:
    """Tags per word from label ids predicted at every position [N, S]: each word takes the
    prediction at its first piece; words without one get 'O'."""
    out = []
    for i, sent in enumerate(sentences):
        tags = ["O"] * len(sent.words)
        for j in np.flatnonzero(word_index[i] >= 0):
            tags[int(word_index[i, j])] = id2label[int(pred_ids[i, j])]
        out.append(tags)
    return out


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def tags_to_cluener(text: str, tags: Sequence[str]) -> dict[str, dict[str, list[list[int]]]]:
    """CLUENER `label` object of character tags (conlleval entity rule, end inclusive)."""
    out: dict[str, dict[str, list[list[int]]]] = {}
    for typ, s, e in bio_entities(tags):
        out.setdefault(typ, {}).setdefault(text[s:e + 1], []).append([s, e])
    return out


def write_conll_predictions(path: str | os.PathLike, sentences: Sequence[Sentence], pred: Sequence[Sequence[str]]) -> None:
    """`word gold pred` lines (conlleval input), a blank line after each sentence ('O' for no gold)."""
    lines = []
    for sent, p in zip(sentences, pred):
        gold = sent.tags or ["O"] * len(sent.words)
        lines += [f"{w} {g} {t}" for w, g, t in zip(sent.words, gold, p)] + [""]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_cluener_predictions(path: str | os.PathLike, sentences: Sequence[Sentence], pred: Sequence[Sequence[str]]) -> None:
    """CLUENER submission lines `{"id": ..., "label": {type: {entity: [[start, end]]}}}`."""
    lines = [json.dumps({"id": s.id, "label": tags_to_cluener("".join(s.words), p)}, ensure_ascii=False)
             for s, p in zip(sentences, pred)]
    atomic_write_text(path, "\n".join(lines) + "\n")
