"""Pretraining recipes: ONE table from a name to everything that defines a member of the family.

A recipe is data, not a subclass: an architecture, a tokenizer kind, how units are masked and corrupted,
how sequences are built from the corpus, which objectives are summed, and optimizer defaults. The
generic training loop (train/loop.py) runs any of them. ``paper`` keeps the original hyper-parameters
so users can see what a one-machine run scales down from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import ModelConfig
from .errors import BertforgeError


@dataclass(frozen=True)
class Recipe:
    # What this recipe changes relative to BERT, in one line.
    summary: str
    # Architecture switches applied to the size preset (position type, sharing, embedding size...).
    model: dict = field(default_factory=dict)
    # Tokenizer kind used when a recipe trains its own tokenizer (see data/tokenizers.py).
    tokenizer: str = "wordpiece"
    # Masking unit: "token" (BERT), "word" (whole-word), "ngram" (MacBERT/ALBERT), "span" (SpanBERT).
    mask_unit: str = "token"
    # N-gram length probabilities for mask_unit="ngram" (index 0 = unigrams).
    ngram_probs: tuple[float, ...] = ()
    # "mask" (80/10/10 with [MASK]) or "similar" (MacBERT: similar word instead of [MASK]).
    corruption: str = "mask"
    # Dynamic (fresh masks each epoch, RoBERTa) or static masking with a duplication factor (BERT).
    dynamic: bool = True
    dupe_factor: int = 1
    # Sequence builder: "nsp", "sop", "full-sentences", "doc-sentences", "single".
    builder: str = "full-sentences"
    # Objectives summed into the loss (objectives/ registry names).
    objectives: tuple[str, ...] = ("mlm",)
    # Optimizer defaults for a one-machine run (the loop's TrainConfig fields).
    optim: dict = field(default_factory=dict)
    # The paper's original pretraining hyper-parameters, for reference.
    paper: str = ""


RECIPES: dict[str, Recipe] = {
    "bert": Recipe(
        summary="MLM with 80/10/10 token masking + next sentence prediction, static masks",
        builder="nsp", objectives=("mlm", "nsp"), dynamic=False, dupe_factor=10,
        optim={"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        paper="Devlin et al. 2019: batch 256 x 512 tokens, 1M steps, Adam lr 1e-4, warmup 10k, wd 0.01, "
        "dupe_factor 10, 90% of steps at length 128",
    ),
    "bert-wwm": Recipe(
        summary="BERT with whole-word masking (English from WordPiece ##, Chinese from a segmenter)",
        mask_unit="word", builder="nsp", objectives=("mlm", "nsp"), dynamic=False, dupe_factor=10,
        optim={"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        paper="Google BERT-wwm release (2019); Cui et al. 2019 for Chinese (LTP segmentation)",
    ),
    "roberta": Recipe(
        summary="byte-level BPE, dynamic masking, FULL-SENTENCES packing, no NSP, large batches",
        model={"model_type": "roberta", "type_vocab_size": 1, "pad_token_id": 1, "position_offset": 2,
               "layer_norm_eps": 1e-5},
        tokenizer="bpe", builder="full-sentences", objectives=("mlm",),
        optim={"optimizer": "adamw", "lr": 6e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01,
               "grad_accum": 4},
        paper="Liu et al. 2019: batch 8k x 512, 500k steps, lr 6e-4 (base), betas (0.9, 0.98), eps 1e-6, "
        "warmup 24k, 160GB text, 50k byte-level BPE",
    ),
    "roberta-wwm-ext": Recipe(
        summary="Chinese characters, dynamic whole-word masking, no NSP",
        tokenizer="chinese-char", mask_unit="word", builder="doc-sentences", objectives=("mlm",),
        optim={"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        paper="Cui et al. 2019/2021: BERT architecture, WWM with LTP, no NSP, 5.4B words (ext data), "
        "batch 2560 x 128 then 384 x 512, lr 1e-4",
    ),
    "albert": Recipe(
        summary="factorized embedding E=128, all layers shared, SOP, n-gram masking (n<=3, p~1/n), LAMB",
        model={"model_type": "albert", "embedding_size": 128, "sharing": "all", "hidden_act": "gelu_new",
               "hidden_dropout": 0.0, "attention_dropout": 0.0},
        tokenizer="unigram", mask_unit="ngram", ngram_probs=(6 / 11, 3 / 11, 2 / 11), builder="sop",
        objectives=("mlm", "sop"), optim={"optimizer": "lamb", "lr": 1.76e-3, "weight_decay": 0.01},
        paper="Lan et al. 2020: batch 4096 x 512, 125k steps, LAMB lr 0.00176, 30k SentencePiece vocab, "
        "n-gram masking n<=3",
    ),
    "electra": Recipe(
        summary="generator (1/4 size) + discriminator, replaced-token detection on every token, lambda=50",
        model={"model_type": "electra", "add_pooler": False},
        builder="doc-sentences", objectives=("electra",),
        optim={"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.01},
        paper="Clark et al. 2020: small: batch 128 x 128, 1M steps, lr 5e-4; base: batch 256 x 512, "
        "lr 2e-4, 766k steps; generator 1/4-1/3 of discriminator width, lambda 50, 15% masking",
    ),
    "spanbert": Recipe(
        summary="geometric(0.2) span masking (max 10 words) + span boundary objective, single segments, no NSP",
        mask_unit="span", builder="single", objectives=("mlm", "sbo"),
        optim={"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        paper="Joshi et al. 2020: batch 256 x 512, 2.4M steps, lr 1e-4, warmup 10k, p=0.2, max span 10",
    ),
    "macbert": Recipe(
        summary="whole-word N-gram masking (40/30/20/10) with similar-word replacement instead of [MASK], SOP",
        tokenizer="chinese-char", mask_unit="ngram", ngram_probs=(0.4, 0.3, 0.2, 0.1), corruption="similar",
        builder="sop", objectives=("mlm", "sop"), optim={"optimizer": "lamb", "lr": 1e-4, "weight_decay": 0.01},
        paper="Cui et al. 2020: initialised from BERT-base-chinese, LAMB, batch 2816 x 512, 1M steps, "
        "similar words from word2vec synonyms, 80/10/10 = similar/random/kept",
    ),
    "nezha": Recipe(
        summary="functional relative positions, whole-word masking, LAMB, mixed precision",
        model={"model_type": "nezha", "position_type": "relative"},
        tokenizer="chinese-char", mask_unit="word", builder="nsp", objectives=("mlm", "nsp"),
        optim={"optimizer": "lamb", "lr": 1e-4, "weight_decay": 0.01, "precision": "bf16"},
        paper="Wei et al. 2019: relative positions clipped at 64, WWM (jieba), LAMB, fp16 mixed precision, "
        "batch 180/GPU on 10 GPUs",
    ),
    "roformer": Recipe(
        summary="rotary position embedding, word-level Chinese tokens",
        model={"model_type": "roformer", "position_type": "rotary", "add_pooler": False},
        tokenizer="chinese-word", mask_unit="word", builder="doc-sentences", objectives=("mlm",),
        optim={"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        paper="Su et al. 2021: initialised from WoBERT, 34GB Chinese text, staged max length 512 -> 1536",
    ),
    "wobert": Recipe(
        summary="word-level Chinese vocabulary (jieba words, characters as fallback)",
        tokenizer="chinese-word", mask_unit="word", builder="doc-sentences", objectives=("mlm",),
        optim={"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        paper="Su 2020 (ZhuiyiTechnology WoBERT): 33,586-entry vocab (20k jieba words), initialised from "
        "RoBERTa-wwm-ext, dynamic MLM",
    ),
    "distilbert": Recipe(
        summary="student = every other teacher layer; soft-target KL (T^2) + MLM + hidden cosine losses",
        model={"model_type": "distilbert", "type_vocab_size": 0, "add_pooler": False},
        builder="doc-sentences", objectives=("distill",),
        optim={"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.0},
        paper="Sanh et al. 2019: student from BERT-base layers, batch 4k, dynamic masking, no NSP, "
        "loss weights ce 5 / mlm 2 / cos 1, T=2, 8 V100 x 90 h",
    ),
}

# Encoder sizes shared by every recipe: (hidden, layers, heads, intermediate).
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (128, 2, 2, 512),
    "mini": (256, 4, 4, 1024),
    "small": (512, 4, 8, 2048),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise BertforgeError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}") from None


def model_config(name: str, size: str, vocab_size: int, source: str = "config", **overrides) -> ModelConfig:
    """The architecture of recipe ``name`` at ``size`` for a tokenizer of ``vocab_size`` ids; ``source``
    names where ``overrides`` came from in errors."""
    r = recipe(name)
    if size not in SIZES:
        raise BertforgeError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
    hidden, layers, heads, inter = SIZES[size]
    fields = {"vocab_size": vocab_size, "hidden_size": hidden, "num_layers": layers, "num_heads": heads,
              "intermediate_size": inter, **r.model}
    # ALBERT's E=128 is a bottleneck only when H is larger; keep E below H at the small sizes.
    if fields.get("embedding_size", 0) >= hidden:
        fields["embedding_size"] = hidden // 2
    return ModelConfig.from_dict({**fields, **overrides}, source=source)
