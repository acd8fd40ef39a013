"""`bertperf vocab`: train a BERT WordPiece vocab.txt from a corpus with HF `tokenizers`.

    bertperf vocab --input CORPUS... --output vocab.txt --vocab_size 30522 [--no_lower_case]
                   [--unused 994] [--min_frequency 2] [--limit_alphabet 1000]

Inputs are read by `bertperf.data.extract.read_documents`: Google's plain text (one sentence a
line, blank lines between documents), WikiExtractor output (files or folders) and Wikipedia XML
dumps. Text is normalized and pre-tokenized exactly as `bertperf.data.tokenize` does it
(BertNormalizer: clean text, CJK characters spaced out so each is its own word, as BERT-Chinese;
lower-casing with accent stripping unless --no_lower_case; BertPreTokenizer: whitespace and
punctuation), then `tokenizers.trainers.WordPieceTrainer` learns the pieces ("##" continuation).

Layout of the written vocab.txt, as Google's BERT vocabularies: id 0 [PAD]; then
[unused0]..[unused98] (when --unused > 0, at most 99 here); [UNK] [CLS] [SEP] [MASK]; then the
remaining [unused99].. slots; then the learned tokens (single characters and pieces). With
--unused 994 the special tokens get ids 0, 100, 101, 102, 103 as in bert-base-uncased. The
requested --vocab_size counts every line; the trainer always keeps the corpus' whole alphabet
(up to --limit_alphabet characters), so a small corpus can give fewer lines (logged) and a tiny
size is an error. The file is written atomically (temporary name, then rename).

The same corpus and options always give the same vocab.txt (see `train_vocab`). The sentences
are spooled once to a temporary file under $TMPDIR (as large as the extracted text).
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import unicodedata
from collections import Counter
from typing import Iterable

from bertperf.data.tokenize import SPECIAL_TOKENS
from bertperf.utils.atomic import atomic_write_text
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

UNUSED_BEFORE_UNK = 99  # bert-base-uncased: [unused0]..[unused98] sit between [PAD] and [UNK]


def build_tokenizer(lower_case: bool):
    """An untrained WordPiece `tokenizers.Tokenizer` with bertperf's (BERT's) normalizer and
    pre-tokenizer (the same settings as `bertperf.data.tokenize.WordPieceTokenizer`)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def layout(learned: Iterable[str], unused: int) -> list[str]:
    """Final vocab lines: [PAD], [unused0..98], [UNK] [CLS] [SEP] [MASK], [unused99..], learned
    tokens in order (specials and [unusedN] strings among them dropped)."""
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    head = min(unused, UNUSED_BEFORE_UNK)
    lines = [pad] + [f"[unused{i}]" for i in range(head)] + [unk, cls, sep, mask]
    lines += [f"[unused{i}]" for i in range(head, unused)]
    reserved = set(lines)
    lines += [t for t in learned if t not in reserved]
    return lines


def _always_alone(ch: str) -> bool:
    """True for characters BERT's pre-tokenization always isolates (CJK ideographs, punctuation):
    they never continue a word, so they get no "##" piece."""
    cp = ord(ch)
    if (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F):
        return True
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def spool_corpus(inputs: list[str], path: str, processes: int, progress: bool) -> tuple[int, Counter]:
    """Write every sentence of `inputs` to `path`, one a line (what the trainer reads); return the
    number of documents and the character counts of the raw text."""
    from bertperf.data.extract import read_documents

    docs, chars = 0, Counter()
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for doc in read_documents(inputs, processes=processes, quiet=not progress):
            docs += 1
            for sentence in doc:
                chars.update(sentence)
                f.write(sentence.replace("\n", " ") + "\n")
    return docs, chars


def continuation_pieces(tok, chars: Counter, limit_alphabet: int | None) -> list[str]:
    """Sorted "##c" for each normalized character c of the alphabet the trainer keeps (the
    `limit_alphabet` most frequent ones) that can continue a word."""
    normalized: Counter = Counter()
    for ch, n in chars.items():
        for c in tok.normalizer.normalize_str(ch):
            if not c.isspace():
                normalized[c] += n
    kept = sorted(normalized, key=lambda c: (-normalized[c], c))[:limit_alphabet]
    return sorted("##" + c for c in kept if not _always_alone(c))


def train_vocab(inputs: list[str], vocab_size: int, lower_case: bool = True, unused: int = 0,
                min_frequency: int = 2, limit_alphabet: int | None = 1000, processes: int = 2,
                progress: bool = False) -> list[str]:
    """Train on the documents of `inputs` and return the vocab lines (see `layout`).

    The sentences are spooled to a temporary file (one pass over the input, then the trainer reads
    the file). Deterministic: `tokenizers`' trainer numbers the "##c" pieces in hash-map order,
    which changes tie-breaks between runs (huggingface/tokenizers issue #1794), so they are
    registered up front, sorted, and the same corpus always gives the same vocab.txt.
    """
    from tokenizers import trainers

    reserved = len(SPECIAL_TOKENS) + unused
    if unused < 0:
        raise BertperfError(f"--unused must be >= 0, got {unused}")
    if vocab_size <= reserved:
        raise BertperfError(f"--vocab_size {vocab_size} leaves no room for learned tokens: the {len(SPECIAL_TOKENS)} "
                            f"special tokens and {unused} [unused] slots take {reserved}; use a size well above "
                            "that (BERT uses 30522 for English, 21128 for Chinese)")
    tok = build_tokenizer(lower_case)
    with tempfile.TemporaryDirectory(prefix="bertperf-vocab-") as tmp:
        corpus = os.path.join(tmp, "sentences.txt")
        docs, chars = spool_corpus(inputs, corpus, processes, progress)
        if docs == 0 or not chars:
            raise BertperfError(f"{', '.join(inputs)}: the corpus has no text to learn from ({docs} documents); "
                                "give Google-format text, WikiExtractor output or a Wikipedia dump")
        pieces = continuation_pieces(tok, chars, limit_alphabet)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size - unused, min_frequency=min_frequency,
                                            special_tokens=list(SPECIAL_TOKENS) + pieces,
                                            limit_alphabet=limit_alphabet, continuing_subword_prefix="##",
                                            show_progress=progress)
        tok.train([corpus], trainer=trainer)
    vocab = tok.get_vocab(with_added_tokens=True)
    learned = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    lines = layout(learned, unused)
    if len(lines) < vocab_size:
        log.warning("the corpus gave %d tokens, fewer than --vocab_size %d (too little text for that size)",
                    len(lines), vocab_size)
    elif len(lines) > vocab_size:
        raise BertperfError(f"{', '.join(inputs)}: the corpus has more distinct characters than fit in --vocab_size "
                            f"{vocab_size} ({len(lines)} tokens); raise --vocab_size or lower --limit_alphabet")
    return lines


def write_vocab(path: str, lines: list[str]) -> None:
    """Write one token per line to `path` atomically."""
    atomic_write_text(path, "\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertperf vocab",
                                description="Train a BERT WordPiece vocab.txt from a corpus (HF tokenizers).")
    p.add_argument("--input", required=True, nargs="+", action="extend", metavar="PATH",
                   help="Google-format text files, WikiExtractor output (files or folders) or Wikipedia XML dumps")
    p.add_argument("--output", required=True, metavar="FILE", help="the vocab.txt to write")
    p.add_argument("--vocab_size", type=int, default=30522, metavar="V",
                   help="lines of vocab.txt, special tokens and [unused] slots included (default %(default)s)")
    p.add_argument("--do_lower_case", dest="lower_case", action="store_true", default=True,
                   help="lower-case and strip accents (default; as uncased BERT)")
    p.add_argument("--no_lower_case", dest="lower_case", action="store_false", help="keep case (cased BERT)")
    p.add_argument("--unused", type=int, default=0, metavar="K",
                   help="[unused] slots to reserve, placed as BERT's vocab.txt does (994 in bert-base-uncased; "
                        "default %(default)s)")
    p.add_argument("--min_frequency", type=int, default=2, metavar="F",
                   help="minimum count of a pair to be merged (default %(default)s)")
    p.add_argument("--limit_alphabet", type=int, default=1000, metavar="A",
                   help="keep at most A distinct characters (default %(default)s; Chinese needs more, e.g. 10000)")
    p.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="wikiextractor processes for XML dumps (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    lines = train_vocab(args.input, args.vocab_size, lower_case=args.lower_case, unused=args.unused,
                        min_frequency=args.min_frequency, limit_alphabet=args.limit_alphabet,
                        processes=args.processes, progress=not args.quiet)
    write_vocab(args.output, lines)
    print(f"wrote {args.output}: {len(lines)} tokens ({'uncased' if args.lower_case else 'cased'}, "
          f"{args.unused} [unused] slots)")
    return 0


if __name__ == "__main__":
    import sys

    from bertperf.utils.errors import run_cli

    sys.exit(run_cli(lambda: main(), prog="bertperf vocab"))
