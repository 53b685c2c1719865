"""`bertforge tokenizer`: train a tokenizer of any BERT-family kind, or inspect one."""

from __future__ import annotations

import argparse

HELP = "train a tokenizer (wordpiece, bpe, unigram, chinese-char, chinese-word) or inspect one"
DESCRIPTION = """Train a tokenizer from raw text files, or show how one splits a text.

kinds:
  wordpiece     BERT WordPiece; CJK characters split one per token (BertTokenizer)
  bpe           RoBERTa byte-level BPE, Ġ marks a space (RobertaTokenizer)
  unigram       ALBERT unigram model trained by SentencePiece, ▁ marks a space (AlbertTokenizer)
  chinese-char  bert-base-chinese style: one token per Chinese character (BertTokenizer)
  chinese-word  WoBERT: jieba words in the vocabulary, other words fall back to characters
                (RoFormerTokenizer in transformers, which needs `pip install rjieba`)

The output directory loads in bertforge.AutoTokenizer and transformers.AutoTokenizer alike.
Input: read as `bertforge corpus build` reads it: text files, one or more sentences a line, or .jsonl
records' "text" field; plain or .gz/.bz2/.xz compressed (recognised by content); directories are read
recursively. Binary and empty files are skipped with a warning; no text at all is an error.
Smallest --vocab-size: bpe 261 (5 special tokens + 256 bytes); wordpiece, chinese-char and chinese-word
the special tokens + one character, with a warning below the characters making up 90% of the text (and
their ## forms: the rest encodes as [UNK]); unigram as many characters as --character-coverage asks for.

examples:
  bertforge tokenizer train --kind wordpiece --vocab-size 30522 --lowercase --out tok/ corpus.txt
  bertforge tokenizer train --kind chinese-word --vocab-size 33586 --out wobert/ zh/*.txt
  bertforge tokenizer encode tok/ "The children were playing."   # tokens, ids, word starts
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.tokenizers import KINDS

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a tokenizer on text files", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("files", nargs="+", metavar="FILE", help="text files or directories")
    t.add_argument("--kind", required=True, choices=KINDS)
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, special tokens included")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--lowercase", action="store_true",
                   help="lower-case (and strip accents) before tokenizing, as uncased BERT/ALBERT do; not for bpe")
    t.add_argument("--min-frequency", type=int, default=2,
                   help="pieces (and chinese-word words) seen fewer times are not learned (default: 2)")
    t.add_argument("--character-coverage", type=float, default=0.9995,
                   help="unigram: share of the text's characters the vocabulary covers; "
                        "the rarest fall to <unk> (default: 0.9995, SentencePiece's advice for CJK)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    e = sub.add_parser("encode", help="show tokens, ids and word starts of texts")
    e.add_argument("tokenizer", help="tokenizer directory")
    e.add_argument("texts", nargs="+", metavar="TEXT")


def run(args: argparse.Namespace) -> int:
    from ..errors import BertforgeError

    if args.action == "train":
        from ..data.tokenizer_train import train_tokenizer

        if args.lowercase and args.kind == "bpe":
            raise BertforgeError("--lowercase: byte-level BPE (RoBERTa) is always cased")
        tok = train_tokenizer(
            args.kind, args.files, args.vocab_size, out=args.out, lowercase=args.lowercase,
            min_frequency=args.min_frequency, character_coverage=args.character_coverage, progress=not args.quiet,
        )
        note = ""
        if tok.vocab_size < args.vocab_size:  # the trainers stop short only when the text offers nothing more
            note = (" (SentencePiece found no more pieces in this text)" if args.kind == "unigram" else
                    f" (the text has no more pieces seen at least --min-frequency {args.min_frequency} times)")
        print(f"wrote {args.kind} tokenizer to {args.out}: {tok.vocab_size} tokens{note}, "
              f"fingerprint {tok.fingerprint[:16]}")
        return 0

    from ..data.tokenizers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    print(f"{tok.kind}, {tok.vocab_size} tokens, fingerprint {tok.fingerprint[:16]}")
    for text in args.texts:
        ids, starts = tok.encode_with_word_starts(text)
        # A word is a start token and the tokens that continue it; "|" separates words.
        tokens = tok.convert_ids_to_tokens(ids)
        shown = " ".join(("| " if start and i else "") + t for i, (t, start) in enumerate(zip(tokens, starts)))
        print(f"\n{text}\n  tokens: {shown}\n  ids:    {ids}")
    return 0
