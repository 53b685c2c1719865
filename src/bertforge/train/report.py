"""What a run leaves to read: metrics.jsonl, TensorBoard events, and report.md with PNG curves.

metrics.jsonl has one JSON object per line: ``kind`` "train" (step, tokens, lr, loss, grad_norm, each
objective metric, padding, tokens_per_s, elapsed), "eval" (step, tokens, loss, each metric, elapsed) or "event"
(checkpoint, resume, stop).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import atomic_path, write_text


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (flushed per line) and mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.jsonl"
        self.file = open(self.path, "a", encoding="utf-8")
        # purge_step drops events a killed run wrote after the checkpoint it resumes from.
        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        if record["kind"] in ("train", "eval"):
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; a torn last line (a killed run) is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep only what happened up to ``step`` (the checkpoint a run resumes from)."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
    write_text(run_dir / "metrics.jsonl", text)


def _plot(path: Path, title: str, ylabel: str, series: dict[str, tuple[list, list]]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return True


def _series(records: list[dict], kind: str, key: str) -> tuple[list, list]:
    rows = [r for r in records if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
    return [r["step"] for r in rows], [r[key] for r in rows]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(run_dir: str | Path, summary: dict[str, Any] | None = None) -> Path:
    """Write ``report.md`` and ``plots/*.png`` from metrics.jsonl and config.json; returns the report path."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    metric_keys = sorted({k for r in train + evals for k in r if isinstance(r[k], (int, float))} -
                         {"step", "tokens", "lr", "elapsed", "tokens_per_s", "grad_norm", "padding"})
    acc_keys = [k for k in metric_keys if "acc" in k]
    loss_keys = [k for k in metric_keys if "loss" in k]

    images = []
    if _plot(plots / "loss.png", "Loss", "loss",
             {f"{kind} {k}": _series(records, kind, k) for k in loss_keys for kind in ("train", "eval")}):
        images.append(("Loss", "plots/loss.png"))
    if acc_keys and _plot(plots / "accuracy.png", "Accuracy", "accuracy",
                          {f"{kind} {k}": _series(records, kind, k) for k in acc_keys for kind in ("train", "eval")}):
        images.append(("Accuracy", "plots/accuracy.png"))
    if _plot(plots / "lr.png", "Learning rate", "lr", {"lr": _series(records, "train", "lr")}):
        images.append(("Learning rate", "plots/lr.png"))

    lines = [f"# Training report: {run_dir.name}", ""]
    facts: dict[str, Any] = dict(summary or {})
    if train:
        last = train[-1]
        facts.setdefault("steps", last["step"])
        facts.setdefault("tokens", last["tokens"])
        facts.setdefault("elapsed (min)", round(last["elapsed"] / 60, 2))
        speeds = sorted(r["tokens_per_s"] for r in train if r.get("tokens_per_s"))
        if speeds:
            facts["median tokens/s"] = round(speeds[len(speeds) // 2], 1)
        pads = sorted(r["padding"] for r in train if "padding" in r)
        if pads:
            facts["median padding"] = f"{pads[len(pads) // 2]:.1%}"
        facts["last train loss"] = last.get("loss")
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in facts.items()] + [""]
    if evals:
        last_eval = evals[-1]
        lines += [f"## Held-out evaluation at step {last_eval['step']}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(last_eval[k])} |" for k in metric_keys if k in last_eval] + [""]
    for title, image in images:
        lines += [f"## {title}", "", f"![{title}]({image})", ""]
    config_path = run_dir / "config.json"
    if config_path.is_file():
        lines += ["## Configuration", "", "```json", config_path.read_text().strip(), "```", ""]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir())
    if ckpts:
        lines += ["## Checkpoints", ""] + [f"- checkpoints/{name}" for name in ckpts] + [""]
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
