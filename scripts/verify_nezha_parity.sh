#!/usr/bin/env bash
# NEZHA parity: bertforge against transformers 4.40.2's NezhaModel, the last transformers release with NEZHA.
#
# transformers 5 (the test dependency) has no NEZHA, so this runs in its own throwaway venv:
#   python3 -m venv; pip install torch==2.13.0 transformers==4.40.2 safetensors numpy; bertforge via PYTHONPATH.
# It checks, on a random tiny NEZHA with every parameter perturbed and a padded batch:
#   1. transformers 4.40.2 save_pretrained -> bertforge: last_hidden_state, MLM and NSP logits;
#   2. bertforge save_pretrained -> transformers 4.40.2 NezhaForPreTraining (no missing/unexpected weights);
#   3. the original release's layout (bert_config.json, bert.* names in pytorch_model.bin) -> bertforge;
#   4. the relative position table, NezhaConfig's defaults and nezha-base's parameter count.
# Prints the max differences; exits 1 if any exceeds 1e-5.
#
# Usage: scripts/verify_nezha_parity.sh            (NEZHA_VENV=/path reuses a venv and keeps it)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY3="${PYTHON:-python3}"
if [[ -n "${NEZHA_VENV:-}" ]]; then
    VENV="$NEZHA_VENV"
else
    VENV="$(mktemp -d /tmp/bertforge-nezha-venv.XXXXXX)"
    trap 'rm -rf "$VENV"' EXIT
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY3" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import transformers, sys; sys.exit(transformers.__version__ != "4.40.2")' 2>/dev/null; then
    echo "installing torch==2.13.0 transformers==4.40.2 into $VENV ..."
    "$VENV/bin/pip" install -q torch==2.13.0 transformers==4.40.2 safetensors numpy 2>&1 | grep -v "^WARNING: Location" || true
fi
WORK="$(mktemp -d /tmp/bertforge-nezha-work.XXXXXX)"
trap 'rm -rf "$WORK"; [[ -n "${NEZHA_VENV:-}" ]] || rm -rf "$VENV"' EXIT

PYTHONPATH="$ROOT/src" "$VENV/bin/python" - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

from bertforge.auto import AutoModelForPreTraining
from bertforge.config import PRESETS
from bertforge.convert import hf
from bertforge.heads import PretrainingModel
from bertforge.modeling import Encoder
from bertforge.positions import nezha_relative_positions

work = Path(sys.argv[1])
assert transformers.__version__ == "4.40.2", transformers.__version__
print(f"transformers {transformers.__version__}, torch {torch.__version__}")
TOL = 1e-5
results = {}


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)


def batch(vocab):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 7:], mask[1, 7:] = 0, 0
    ids[2, 10:], mask[2, 10:] = 0, 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


def compare(name, ours, theirs, ids, mask, types):
    with torch.no_grad():
        mine = ours(ids, mask, types)
        other = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    pairs = {
        "last_hidden_state": (mine["encoder"].last_hidden_state, other.hidden_states[-1]),
        "mlm_logits": (mine["mlm_logits"], other.prediction_logits),
        "nsp_logits": (mine["pair_logits"], other.seq_relationship_logits),
    }
    for key, (a, b) in pairs.items():
        results[f"{name}: {key}"] = (a - b).abs().max().item()


# A tiny NEZHA whose sequences (13) are longer than the clipping distance (max_relative_position=5).
tiny = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, max_relative_position=5)
ids, mask, types = batch(99)

# 1. transformers -> bertforge
torch.manual_seed(0)
theirs = transformers.NezhaForPreTraining(transformers.NezhaConfig(**tiny))
perturb(theirs)
theirs.eval().save_pretrained(work / "hf")
ours = AutoModelForPreTraining.from_pretrained(work / "hf")
compare("transformers -> bertforge", ours, theirs, ids, mask, types)

# 2. bertforge -> transformers
config = hf.config_from_hf({"model_type": "nezha", **tiny}, source="tiny")
torch.manual_seed(0)
ours = PretrainingModel(config, ("mlm", "pair")).eval()
perturb(ours)
ours.save_pretrained(work / "ours")
theirs, info = transformers.NezhaForPreTraining.from_pretrained(work / "ours", output_loading_info=True)
problems = {k: v for k, v in info.items() if v}
if problems:
    sys.exit(f"transformers 4.40.2 reported loading problems: {problems}")
compare("bertforge -> transformers", ours, theirs.eval(), ids, mask, types)
base = transformers.AutoModel.from_pretrained(work / "ours").eval()
with torch.no_grad():
    a = ours.encoder(ids, mask, types).last_hidden_state
    b = base(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
results["bertforge -> transformers AutoModel: last_hidden_state"] = (a - b).abs().max().item()

# 3. the original release's layout: bert_config.json without model_type, bert.* names, pytorch_model.bin
original = work / "original"
original.mkdir()
hf_config = json.loads((work / "hf" / "config.json").read_text())
keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "max_relative_position",
        "type_vocab_size", "initializer_range")
(original / "bert_config.json").write_text(json.dumps({k: hf_config[k] for k in keep} | {"use_relative_position": True}))
tensors = load_file(work / "hf" / "model.safetensors")
torch.save({k.replace("nezha.", "bert.", 1): v for k, v in tensors.items()}, original / "pytorch_model.bin")
theirs = transformers.NezhaForPreTraining.from_pretrained(work / "hf").eval()
compare("original layout -> bertforge", AutoModelForPreTraining.from_pretrained(original), theirs, ids, mask, types)

# 4. the relative position table, config defaults, parameter count
for length, depth, k in ((13, 8, 5), (512, 64, 64)):
    module = transformers.models.nezha.modeling_nezha.NezhaRelativePositionsEncoding(length, depth, k)
    table = nezha_relative_positions(length, depth, k)
    results[f"relative position table L={length} d={depth} k={k}"] = (table - module.positions_encoding).abs().max().item()
defaults = transformers.NezhaConfig().to_dict()
wrong = {k: (v, defaults[k]) for k, v in hf.HF_SPECS["nezha"].defaults.items() if defaults[k] != v}
if wrong:
    sys.exit(f"bertforge's NEZHA config defaults differ from NezhaConfig's: {wrong}")
preset = PRESETS["nezha-base"]
with torch.device("meta"):
    mine = Encoder(preset).num_parameters()
    other = transformers.NezhaModel(transformers.NezhaConfig(**hf.config_to_hf(preset, ()))).num_parameters()
print(f"nezha-base parameters: bertforge {mine:,}, transformers 4.40.2 NezhaModel {other:,}")

width = max(map(len, results))
for name, diff in results.items():
    print(f"  {name:<{width}}  max |diff| = {diff:.3e}")
worst = max(results.values())
print(f"max difference: {worst:.3e} (tolerance {TOL:g})")
if worst > TOL or mine != other:
    sys.exit(1)
print("NEZHA parity: OK")
EOF
