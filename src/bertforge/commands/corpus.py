"""`bertforge corpus`: build a memory-mapped corpus store from raw text, inspect it, redraw its split."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

HELP = "build a tokenized, memory-mapped corpus store from raw text; show its statistics"
DESCRIPTION = """Turn raw text into a corpus store that every pretraining recipe reads (see docs/corpus.md).

  build   .txt (one document per line, or per blank-line block with --document-per block), .jsonl
          (--text-field), .gz/.bz2/.xz, directories and globs, and the named real corpora
          (--source peoples-daily|sanguo|rotten-tomatoes|wiki-sample, read from installed packages).
          Sentences are split (English and Chinese punctuation), tokenized in --workers processes,
          and written with word-start flags, sentence/document offsets and a manifest. Messy input
          (bad UTF-8, NUL bytes, binaries, empty files, huge lines) is repaired or skipped and counted.
  stats   documents, sentences, tokens, split, length histograms, unknown-token rate, build report.
  split   redraw the train/validation split of a store without re-tokenizing.

examples:
  bertforge corpus build --source peoples-daily --tokenizer tok/ --out corpus/
  bertforge corpus build 'data/**/*.txt.gz' --document-per block --tokenizer tok/ --out corpus/ --workers 4
  bertforge corpus stats corpus/
  bertforge corpus split corpus/ --validation-fraction 0.05 --seed 1
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="tokenize raw text into a corpus store",
                       description="Tokenize raw text into a corpus store.")
    b.add_argument("inputs", nargs="*", metavar="INPUT", help="files, directories or globs (quote globs)")
    b.add_argument("--source", action="append", default=[], metavar="NAME",
                   help="a named real corpus: peoples-daily, sanguo, rotten-tomatoes, wiki-sample (repeatable)")
    b.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory")
    b.add_argument("--out", required=True, metavar="DIR", help="store directory to create")
    b.add_argument("--workers", type=int, default=2, help="tokenizer processes (0 = in this process; default 2)")
    b.add_argument("--document-per", choices=("line", "block"), default="line",
                   help="text files: one document per line, or per blank-line separated block (default line)")
    b.add_argument("--text-field", default="text", help="the text field of .jsonl records (default text)")
    b.add_argument("--format", choices=("auto", "text", "jsonl", "peoples-daily"), default="auto",
                   help="input format: auto (.jsonl/.ndjson names are jsonl, the rest text), or force one; "
                        "peoples-daily = PKU word/POS format, its words kept as gold word boundaries")
    b.add_argument("--validation-fraction", type=float, default=0.01,
                   help="fraction of documents held out for validation (default 0.01)")
    b.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("stats", help="print a store's statistics", description="Print a store's statistics.")
    s.add_argument("store", metavar="STORE")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.add_argument("--verify", action="store_true", help="also re-hash the data files against the manifest")
    sp = sub.add_parser("split", help="redraw a store's train/validation split",
                        description="Redraw a store's train/validation split in place.")
    sp.add_argument("store", metavar="STORE")
    sp.add_argument("--validation-fraction", type=float, required=True)
    sp.add_argument("--seed", type=int, default=0)


def _interrupt_once(signum, frame):
    """SIGTERM cleans up like Ctrl-C: the half-built store is removed. Signals after the first are ignored:
    `timeout -s INT` signals the process and then its group, an impatient user presses Ctrl-C twice, and
    either would otherwise break off the cleanup (leaving the temporary store) or hang the exit."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import time

    from ..data.corpus import CorpusStore, build_corpus, corpus_stats, format_stats, resplit

    if args.action == "build":
        previous = {sig: signal.signal(sig, _interrupt_once) for sig in (signal.SIGINT, signal.SIGTERM)}
        # An interrupt leaves by os._exit (below), which hands the worker pool's semaphores to multiprocessing's
        # resource tracker: it removes them, and would warn about each as "leaked". The tracker process takes
        # its warning filters from sys.warnoptions when it starts (with the pool).
        quiet_tracker = "ignore::UserWarning:multiprocessing.resource_tracker"
        if quiet_tracker not in sys.warnoptions:  # once per process, however often main() runs
            sys.warnoptions.append(quiet_tracker)
        start = time.perf_counter()
        try:
            store = build_corpus(args.out, args.tokenizer, args.inputs, sources=args.source, workers=args.workers,
                                 document_per=args.document_per, text_field=args.text_field,
                                 input_format=args.format, validation_fraction=args.validation_fraction,
                                 seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
        except KeyboardInterrupt:
            # build_corpus has removed its temporary store. Leave at once, without the interpreter's exit
            # handlers: concurrent.futures joins its pool's manager thread there, and after workers were killed
            # mid-chunk that join could wait forever (seen after a second Ctrl-C, ~1 run in 6).
            print("bertforge: interrupted", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)
        finally:  # reached only without an interrupt (that leaves above)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        seconds = time.perf_counter() - start
        c = store.manifest["counts"]
        report = {k: v for k, v in store.manifest["build_report"].items() if k != "warnings" and v}
        print(f"wrote {store.path}: {c['documents']:,} documents, {c['sentences']:,} sentences, "
              f"{c['tokens']:,} tokens in {seconds:.1f}s ({c['input_bytes'] / seconds / 1e6:.2f} MB/s, "
              f"{c['tokens'] / seconds:,.0f} tokens/s)")
        print("build report: " + (", ".join(f"{k} {v:,}" for k, v in report.items()) or "clean"))
        return 0
    if args.action == "split":
        store = resplit(args.store, args.validation_fraction, args.seed)
        sp = store.manifest["split"]
        print(f"{store.path}: {sp['train_docs']:,} train / {sp['validation_docs']:,} validation documents "
              f"(seed {sp['seed']})")
        return 0
    store = CorpusStore(args.store)
    if args.verify:
        store.verify()
    stats = corpus_stats(store)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    return 0
