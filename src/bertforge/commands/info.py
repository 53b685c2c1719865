"""`bertforge info`: the architecture presets with parameter counts computed by the model itself."""

from __future__ import annotations

import argparse
import json

HELP = "list architecture presets with their parameter counts (optionally with --set overrides)"
DESCRIPTION = """List the architecture presets (bertforge/config.py PRESETS) with the parameter count of the
encoder each one builds (embeddings + layers + pooler, no pretraining heads: what transformers'
AutoModel counts), beside the number the paper reports. The model is built on PyTorch's meta device,
so even ALBERT-xxlarge costs no memory.

--set key=value changes any ModelConfig field of the listed presets and shows the new count next to
the preset's own; --model DIR shows a local checkpoint's config and count.

examples:
  bertforge info
  bertforge info --preset albert-base --set sharing=none          # ALBERT without cross-layer sharing
  bertforge info --preset bert-base --set embedding_size=128      # BERT-base with factorized embeddings
  bertforge info --preset electra-small-discriminator --json
  bertforge info --model path/to/checkpoint
"""

# What each paper reports (rounded, as published) for the presets that have a published size.
PAPER = {
    "bert-tiny": (4.4, "Turc et al., 2019"),
    "bert-mini": (11.3, "Turc et al., 2019"),
    "bert-small": (29.1, "Turc et al., 2019"),
    "bert-base": (110, "Devlin et al., 2019"),
    "bert-large": (340, "Devlin et al., 2019"),
    "roberta-base": (125, "Liu et al., 2019 (fairseq release)"),
    "albert-base": (12, "Lan et al., 2020, Table 1"),
    "albert-large": (18, "Lan et al., 2020, Table 1"),
    "albert-xlarge": (60, "Lan et al., 2020, Table 1"),
    "albert-xxlarge": (235, "Lan et al., 2020, Table 1"),
    "electra-small-discriminator": (14, "Clark et al., 2020, Table 1"),
    "electra-base-discriminator": (110, "Clark et al., 2020, Table 1"),
    "distilbert-base": (66, "Sanh et al., 2019"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", action="append", metavar="NAME", help="only this preset (repeatable; default: all)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="override a ModelConfig field, e.g. --set sharing=none (repeatable)")
    p.add_argument("--model", metavar="DIR", help="show a local checkpoint directory's config and count instead")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def count_parameters(config) -> int:
    """Parameters of the encoder the config builds, counted by the model (on the meta device: no memory)."""
    import torch

    from ..modeling import Encoder

    with torch.device("meta"):
        return Encoder(config).num_parameters()


def _row(name: str, config, base_count: int | None = None) -> dict:
    count = count_parameters(config)
    row = {"name": name, "model_type": config.model_type, "parameters": count, "config": config.to_dict()}
    if base_count is not None and base_count != count:
        row["preset_parameters"] = base_count
    if name in PAPER:
        row["paper_millions"], row["paper_source"] = PAPER[name]
    return row


def run(args: argparse.Namespace) -> int:
    from ..auto import AutoConfig
    from ..config import PRESETS, preset

    if args.model:
        rows = [_row(str(args.model), AutoConfig.from_pretrained(args.model).with_overrides(args.overrides))]
    else:
        names = args.preset or [n for n in PRESETS if n != "test-tiny"]
        rows = []
        for name in names:
            base = preset(name)
            config = base.with_overrides(args.overrides)
            rows.append(_row(name, config, count_parameters(base) if args.overrides else None))
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
        return 0
    if args.model or (args.preset and len(rows) == 1):
        _print_one(rows[0], args.overrides)
        return 0
    _print_table(rows)
    return 0


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def _print_table(rows: list[dict]) -> None:
    head = ("preset", "type", "L", "H", "E", "heads", "FFN", "sharing", "positions", "parameters", "", "paper")
    table = []
    for r in rows:
        c = r["config"]
        params = f"{r['parameters']:,}"
        if "preset_parameters" in r:
            params += f" (was {r['preset_parameters']:,})"
        paper = f"{r['paper_millions']}M ({r['paper_source']})" if "paper_millions" in r else "-"
        table.append((r["name"], c["model_type"], c["num_layers"], c["hidden_size"], c["embedding_size"] or c["hidden_size"],
                      c["num_heads"], c["intermediate_size"], c["sharing"], c["position_type"], params,
                      _millions(r["parameters"]), paper))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for line in (head, *table):
        print("  ".join(str(x).ljust(w) if i in (0, 1, 7, 8, 11) else str(x).rjust(w)
                        for i, (x, w) in enumerate(zip(line, widths))).rstrip())
    print("\nparameters: the encoder as transformers' AutoModel counts it (embeddings, layers, pooler; no "
          "pretraining heads). ALBERT-xxlarge: the paper reports 235M, the released model counts 223M.")


def _print_one(row: dict, overrides: list[str] | None) -> None:
    print(f"{row['name']}: {row['parameters']:,} parameters ({_millions(row['parameters'])})")
    if "preset_parameters" in row:
        delta = row["parameters"] - row["preset_parameters"]
        print(f"  preset without --set {' '.join(overrides or [])}: {row['preset_parameters']:,} ({delta:+,})")
    if "paper_millions" in row:
        print(f"  paper: {row['paper_millions']}M ({row['paper_source']})")
    for key, value in row["config"].items():
        print(f"  {key} = {value}")
