"""Hugging Face checkpoint layouts: config.json keys and tensor names, per model type, both ways.

The model keeps clean internal names (``embeddings.word``, ``attentions[j].qkv``, ``ffns[j].up``); every
checkpoint name lives here. One ``Layout`` per ``model_type`` says where each internal part sits in a
``transformers`` checkpoint; ``encoder_names``/``head_names`` turn it into a flat map
``internal name -> checkpoint name`` (a 3-tuple for the fused QKV projection, which checkpoints store as
separate query/key/value matrices). Loading and saving (``checkpoint.py``) use the same map, so the two
directions cannot drift apart.

transformers itself is never imported: it is a test dependency, not a runtime one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import BertforgeError
from ..modeling import sharing_plan
from ..positions import rotary_angles

# ---- config.json -----------------------------------------------------------------------------------
# HF key -> ModelConfig field for the BERT-style configs (bert, roberta, albert, electra, roformer, nezha).
_BERT_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
    "pad_token_id": "pad_token_id",
    "initializer_range": "initializer_range",
}
_DISTILBERT_KEYS = {
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "n_layers": "num_layers",
    "n_heads": "num_heads",
    "hidden_dim": "intermediate_size",
    "activation": "hidden_act",
    "dropout": "hidden_dropout",
    "attention_dropout": "attention_dropout",
    "max_position_embeddings": "max_position_embeddings",
    "pad_token_id": "pad_token_id",
    "initializer_range": "initializer_range",
}
_BERT_DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "pad_token_id": 0, "initializer_range": 0.02,
}

# Keys every transformers config may carry that do not change the encoder's function (generation
# settings, label maps, bookkeeping, fine-tuning dropouts, the unused pooler_* of bert-base-chinese).
# Any key outside these, the mapped ones and _REQUIRED is an error: it might change the network.
_IGNORED_KEYS = frozenset(
    """architectures model_type transformers_version torch_dtype dtype use_bfloat16 return_dict
    output_attentions output_hidden_states torchscript tf_legacy_loss chunk_size_feed_forward
    is_encoder_decoder cross_attention_hidden_size tie_encoder_decoder max_length min_length do_sample
    early_stopping num_beams num_beam_groups diversity_penalty temperature top_k top_p typical_p
    repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids
    num_return_sequences output_scores return_dict_in_generate forced_bos_token_id forced_eos_token_id
    remove_invalid_values exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
    finetuning_task id2label label2id num_labels problem_type tokenizer_class prefix bos_token_id
    eos_token_id sep_token_id decoder_start_token_id task_specific_params use_cache gradient_checkpointing
    output_past classifier_dropout classifier_dropout_prob qa_dropout seq_classif_dropout summary_type
    summary_use_proj summary_activation summary_last_dropout summary_proj_to_labels generator_size
    generator_hidden_size directionality pooler_fc_size pooler_num_attention_heads pooler_num_fc_layers
    pooler_size_per_head pooler_type bertforge""".split()
)
# Keys whose other values describe networks bertforge does not build (decoders, untied output
# embeddings, relative_key attention, pruned heads...): key -> the one value bertforge runs.
_REQUIRED = {
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "tie_weights_": True,
    "pruned_heads": {},
    "position_embedding_type": "absolute",
    "sinusoidal_pos_embds": False,
    "inner_group_num": 1,
}


@dataclass(frozen=True)
class HFSpec:
    """How one model type's config.json maps to ModelConfig."""

    keys: dict[str, str]  # HF key -> ModelConfig field
    defaults: dict[str, Any]  # the transformers config class's defaults, for keys a config.json leaves out
    fixed: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields the model type implies
    extra: tuple[str, ...] = ()  # type-specific HF keys handled in config_from_hf


HF_SPECS: dict[str, HFSpec] = {
    "bert": HFSpec(_BERT_KEYS, _BERT_DEFAULTS),
    "roberta": HFSpec(_BERT_KEYS, {**_BERT_DEFAULTS, "vocab_size": 50265, "pad_token_id": 1}),
    "albert": HFSpec(
        _BERT_KEYS,
        {**_BERT_DEFAULTS, "vocab_size": 30000, "hidden_size": 4096, "num_attention_heads": 64,
         "intermediate_size": 16384, "hidden_act": "gelu_new", "hidden_dropout_prob": 0.0,
         "attention_probs_dropout_prob": 0.0, "embedding_size": 128, "num_hidden_groups": 1},
        extra=("embedding_size", "num_hidden_groups"),
    ),
    "electra": HFSpec(
        _BERT_KEYS,
        {**_BERT_DEFAULTS, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024,
         "embedding_size": 128},
        fixed={"add_pooler": False},
        extra=("embedding_size",),
    ),
    "distilbert": HFSpec(
        _DISTILBERT_KEYS,
        {"vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072, "activation": "gelu",
         "dropout": 0.1, "attention_dropout": 0.1, "max_position_embeddings": 512, "pad_token_id": 0,
         "initializer_range": 0.02},
        # DistilBERT has no segment embedding and hard-codes LayerNorm eps 1e-12.
        fixed={"type_vocab_size": 0, "add_pooler": False, "layer_norm_eps": 1e-12},
    ),
    "roformer": HFSpec(
        _BERT_KEYS,
        {**_BERT_DEFAULTS, "vocab_size": 50000, "max_position_embeddings": 1536, "embedding_size": None,
         "rotary_value": False},
        fixed={"position_type": "rotary", "add_pooler": False},
        extra=("embedding_size", "rotary_value"),
    ),
    # transformers 4.40.2's NezhaConfig (the last release with NEZHA); no absolute position table.
    "nezha": HFSpec(
        _BERT_KEYS,
        {**_BERT_DEFAULTS, "vocab_size": 21128, "max_relative_position": 64},
        fixed={"position_type": "relative"},
        extra=("max_relative_position",),
    ),
}


def config_from_hf(data: dict[str, Any], source: str) -> ModelConfig:
    """A transformers config.json (already parsed) -> ModelConfig. ``source`` names the file in errors."""
    model_type = data.get("model_type")
    if model_type not in HF_SPECS:
        raise BertforgeError(
            f"{source}: unknown model_type {model_type!r}; bertforge reads {', '.join(HF_SPECS)}"
        )
    spec = HF_SPECS[model_type]
    for key, value in data.items():
        if key in spec.keys or key in spec.extra or key in _IGNORED_KEYS or key.startswith("_"):
            continue
        if key in _REQUIRED:
            if value != _REQUIRED[key]:
                raise BertforgeError(
                    f"{source}: {key}={value!r} is not supported (bertforge builds {key}={_REQUIRED[key]!r})"
                )
            continue
        raise BertforgeError(f"{source}: unknown config key {key!r} for model_type {model_type!r}")
    hf = {**spec.defaults, **{k: v for k, v in data.items() if k in spec.keys or k in spec.extra}}
    fields: dict[str, Any] = {"model_type": model_type, **spec.fixed}
    fields.update({spec.keys[k]: v for k, v in hf.items() if k in spec.keys})
    hidden = fields["hidden_size"]
    if model_type == "roberta":
        # fairseq positions count from padding_idx + 1 (modeling.roberta_position_ids).
        fields["position_offset"] = fields["pad_token_id"] + 1
    if model_type in ("roberta", "electra"):
        # RobertaLMHead and ElectraGeneratorPredictions hard-code erf GELU whatever hidden_act says.
        fields["head_act"] = "" if fields["hidden_act"] == "gelu" else "gelu"
    if model_type in ("albert", "electra", "roformer"):
        e = hf["embedding_size"] or hidden
        if model_type == "albert" and e == hidden:
            # AlbertModel always has the E -> H projection; bertforge builds it only when E != H.
            raise BertforgeError(f"{source}: ALBERT with embedding_size == hidden_size ({e}) is not supported")
        fields["embedding_size"] = 0 if e == hidden else e
    if model_type == "albert":
        groups, layers = hf["num_hidden_groups"], fields["num_layers"]
        if groups not in (1, layers):
            raise BertforgeError(
                f"{source}: num_hidden_groups={groups} is not supported: bertforge shares one layer across "
                f"all {layers} layers (1) or none ({layers})"
            )
        fields["sharing"] = "all" if groups == 1 else "none"
    if model_type == "roformer":
        fields["rotary_value"] = bool(hf["rotary_value"])
    if model_type == "nezha":
        fields["max_relative_position"] = hf["max_relative_position"]
    try:
        return ModelConfig.from_dict(fields, source=source)
    except BertforgeError as exc:
        msg = str(exc)
        raise BertforgeError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def hf_incompatibility(config: ModelConfig, heads: tuple[str, ...]) -> str | None:
    """Why transformers cannot express this model in its model_type's layout; None when it can."""
    c, t = config, config.model_type
    expected_positions = {"nezha": "relative", "roformer": "rotary"}.get(t, "absolute")
    checks = [
        (c.position_type == expected_positions, f"position_type={c.position_type!r} ({t} uses {expected_positions!r})"),
        (c.sharing == "none" or (t == "albert" and c.sharing == "all"), f"sharing={c.sharing!r}"),
        (t != "albert" or c.emb_size != c.hidden_size, "ALBERT with embedding_size == hidden_size"),
        (c.emb_size == c.hidden_size or t in ("albert", "electra", "roformer"),
         f"factorized embeddings (embedding_size={c.embedding_size}) in {t}"),
        ((c.position_offset != 0) == (t == "roberta"), f"position_offset={c.position_offset} in {t}"),
        (not c.rotary_value or t == "roformer", "rotary_value=True outside roformer"),
        ((c.type_vocab_size == 0) == (t == "distilbert"), f"type_vocab_size={c.type_vocab_size} in {t}"),
        (not c.add_pooler or t in ("bert", "roberta", "albert", "nezha"), f"a pooler in {t}"),
        (t != "distilbert" or c.layer_norm_eps == 1e-12, f"layer_norm_eps={c.layer_norm_eps} in distilbert"),
        (tuple(heads) in ARCHITECTURES[t], f"heads {tuple(heads)} in {t}"),
    ]
    if "mlm" in heads:
        mlm_act = "gelu" if t in ("roberta", "electra") else c.hidden_act
        checks.append((c.mlm_act == mlm_act, f"MLM head activation {c.mlm_act!r} ({t} uses {mlm_act!r})"))
    return next((why for ok, why in checks if not ok), None)


def config_to_hf(config: ModelConfig, heads: tuple[str, ...]) -> dict[str, Any]:
    """ModelConfig -> a config.json dict transformers reads (call hf_incompatibility first)."""
    c, t = config, config.model_type
    spec = HF_SPECS[t]
    data: dict[str, Any] = {"architectures": [ARCHITECTURES[t][tuple(heads)]], "model_type": t}
    data.update({k: getattr(c, f) for k, f in spec.keys.items()})
    if t in ("albert", "electra", "roformer"):
        data["embedding_size"] = c.emb_size
    if t == "albert":
        data.update(num_hidden_groups=1 if c.sharing == "all" else c.num_layers, inner_group_num=1)
    if t == "roformer":
        data["rotary_value"] = c.rotary_value
    if t == "nezha":
        data["max_relative_position"] = c.max_relative_position
    if t in ("bert", "roberta", "albert", "electra"):
        data["position_embedding_type"] = "absolute"
    if t == "distilbert":
        data["sinusoidal_pos_embds"] = False
    data["tie_word_embeddings"] = True
    return data


# ---- tensor names ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where each bertforge part sits in one model type's transformers checkpoint."""

    prefixes: tuple[str, ...]  # base-model prefix in task checkpoints ("bert.embeddings..."); first = written
    class_prefix: str  # "Bert" -> BertModel, BertForMaskedLM, BertForPreTraining
    word: str = "embeddings.word_embeddings"
    position: str = "embeddings.position_embeddings"
    segment: str = "embeddings.token_type_embeddings"
    embedding_norm: str = "embeddings.LayerNorm"
    project: str = "embeddings_project"  # E -> H (ELECTRA, RoFormer; ALBERT's is in its encoder)
    block: str = "encoder.layer.{j}"  # module j of the layer stack
    attention: tuple[str, ...] = (  # q, k, v, output, LayerNorm inside block
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "attention.output.LayerNorm",
    )
    ffn: tuple[str, ...] = ("intermediate.dense", "output.dense", "output.LayerNorm")  # up, down, LayerNorm
    pooler: str = "pooler.dense"
    # head -> bertforge submodule -> checkpoint module ("bias" is a bare parameter, the MLM output bias)
    heads: dict[str, dict[str, str]] = field(default_factory=dict)
    decoder: str = "cls.predictions.decoder"  # the tied E -> V decoder: .weight = word embeddings, .bias = MLM bias


_BERT_LAYOUT = Layout(
    prefixes=("bert",),
    class_prefix="Bert",
    heads={
        "mlm": {"dense": "cls.predictions.transform.dense", "norm": "cls.predictions.transform.LayerNorm",
                "bias": "cls.predictions.bias"},
        "pair": {"classifier": "cls.seq_relationship"},
    },
)
LAYOUTS: dict[str, Layout] = {
    "bert": _BERT_LAYOUT,
    "roberta": dataclasses.replace(
        _BERT_LAYOUT, prefixes=("roberta",), class_prefix="Roberta",
        heads={"mlm": {"dense": "lm_head.dense", "norm": "lm_head.layer_norm", "bias": "lm_head.bias"}},
        decoder="lm_head.decoder",
    ),
    "albert": dataclasses.replace(
        _BERT_LAYOUT, prefixes=("albert",), class_prefix="Albert",
        project="encoder.embedding_hidden_mapping_in",
        block="encoder.albert_layer_groups.{j}.albert_layers.0",  # one layer per group (inner_group_num=1)
        attention=("attention.query", "attention.key", "attention.value", "attention.dense", "attention.LayerNorm"),
        ffn=("ffn", "ffn_output", "full_layer_layer_norm"),
        pooler="pooler",
        heads={
            "mlm": {"dense": "predictions.dense", "norm": "predictions.LayerNorm", "bias": "predictions.bias"},
            "pair": {"classifier": "sop_classifier.classifier"},
        },
        decoder="predictions.decoder",
    ),
    "electra": dataclasses.replace(
        _BERT_LAYOUT, prefixes=("electra",), class_prefix="Electra",
        heads={
            # the generator (ElectraForMaskedLM) and the discriminator (ElectraForPreTraining)
            "mlm": {"dense": "generator_predictions.dense", "norm": "generator_predictions.LayerNorm",
                    "bias": "generator_lm_head.bias"},
            "rtd": {"dense": "discriminator_predictions.dense",
                    "prediction": "discriminator_predictions.dense_prediction"},
        },
        decoder="generator_lm_head",
    ),
    "distilbert": dataclasses.replace(
        _BERT_LAYOUT, prefixes=("distilbert",), class_prefix="DistilBert",
        block="transformer.layer.{j}",
        attention=("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "sa_layer_norm"),
        ffn=("ffn.lin1", "ffn.lin2", "output_layer_norm"),
        heads={"mlm": {"dense": "vocab_transform", "norm": "vocab_layer_norm", "bias": "vocab_projector.bias"}},
        decoder="vocab_projector",
    ),
    "roformer": dataclasses.replace(
        _BERT_LAYOUT, prefixes=("roformer",), class_prefix="RoFormer", heads={"mlm": _BERT_LAYOUT.heads["mlm"]},
    ),
    # transformers 4.40.2 writes "nezha."; the original NEZHA release (convert/nezha.py) "bert.".
    "nezha": dataclasses.replace(_BERT_LAYOUT, prefixes=("nezha", "bert"), class_prefix="Nezha"),
}


def _architectures(layout: Layout) -> dict[tuple[str, ...], str]:
    p = layout.class_prefix
    classes = {(): f"{p}Model", ("mlm",): f"{p}ForMaskedLM"}
    if "pair" in layout.heads:
        classes[("mlm", "pair")] = f"{p}ForPreTraining"  # MLM + NSP (BERT, NEZHA) or SOP (ALBERT)
    if "rtd" in layout.heads:
        classes[("rtd",)] = f"{p}ForPreTraining"  # the ELECTRA discriminator
    return classes


# Heads -> transformers class, per model type: the head sets a transformers checkpoint can hold.
ARCHITECTURES = {t: _architectures(layout) for t, layout in LAYOUTS.items()}
# The heads of each type's ForPreTraining class (MLM only where transformers has none).
PRETRAINING_HEADS = {
    t: next((heads for heads, cls in classes.items() if cls.endswith("ForPreTraining")), ("mlm",))
    for t, classes in ARCHITECTURES.items()
}

# Tensors some checkpoints carry that are not weights: position-id buffers, RoFormer's fixed sinusoid
# table, NEZHA's fixed relative-position table (transformers' and the original release's name). All are
# recomputed by bertforge.
BUFFERS = re.compile(
    r"(^|\.)(position_ids|token_type_ids|embed_positions\.weight|positions_encoding|embeddings_table)$"
)

Name = str | tuple[str, str, str]  # a checkpoint tensor, or (query, key, value) for the fused qkv


def _module(names: dict[str, Name], internal: str, ckpt: str, bias: bool = True) -> None:
    names[f"{internal}.weight"] = f"{ckpt}.weight"
    if bias:
        names[f"{internal}.bias"] = f"{ckpt}.bias"


def encoder_names(config: ModelConfig, layout: Layout) -> dict[str, Name]:
    """Encoder state-dict name -> base-model checkpoint name (without the "bert." prefix)."""
    c, names = config, {}
    _module(names, "embeddings.word", layout.word, bias=False)
    if c.position_type == "absolute":
        _module(names, "embeddings.position", layout.position, bias=False)
    if c.type_vocab_size > 0:
        _module(names, "embeddings.segment", layout.segment, bias=False)
    _module(names, "embeddings.norm", layout.embedding_norm)
    if c.emb_size != c.hidden_size:
        _module(names, "embeddings.project", layout.project)
    attention_index, ffn_index = sharing_plan(c)
    q, k, v, out, norm = layout.attention
    for j in range(max(attention_index) + 1):
        block = layout.block.format(j=j)
        for p in ("weight", "bias"):
            names[f"attentions.{j}.qkv.{p}"] = (f"{block}.{q}.{p}", f"{block}.{k}.{p}", f"{block}.{v}.{p}")
        _module(names, f"attentions.{j}.out", f"{block}.{out}")
        _module(names, f"attentions.{j}.norm", f"{block}.{norm}")
    up, down, norm = layout.ffn
    for j in range(max(ffn_index) + 1):
        block = layout.block.format(j=j)
        _module(names, f"ffns.{j}.up", f"{block}.{up}")
        _module(names, f"ffns.{j}.down", f"{block}.{down}")
        _module(names, f"ffns.{j}.norm", f"{block}.{norm}")
    if c.add_pooler:
        _module(names, "pooler", layout.pooler)
    return names


def head_names(layout: Layout, head: str) -> dict[str, str]:
    """PretrainingModel state-dict names of one head -> checkpoint names (absolute, no prefix)."""
    names: dict[str, str] = {}
    for part, ckpt in layout.heads[head].items():
        if part == "bias":
            names[f"{head}.bias"] = ckpt
        else:
            _module(names, f"{head}.{part}", ckpt)
    return names


def fixed_tensors(config: ModelConfig) -> dict[str, torch.Tensor]:
    """Non-trained tables transformers expects in a checkpoint of this type (base-model names).

    RoFormer stores its sinusoid table [max_position_embeddings, d] as a frozen parameter, all sines then
    all cosines (transformers' RoFormerSinusoidalPositionalEmbedding); bertforge computes the same angles
    on the fly (positions.rotary_angles), so it writes the table on save and skips it on load.
    """
    if config.model_type != "roformer":
        return {}
    sin, cos = rotary_angles(torch.arange(config.max_position_embeddings), config.head_dim)  # [1, 1, P, d]
    return {"encoder.embed_positions.weight": torch.cat([sin[0, 0, :, 0::2], cos[0, 0, :, 0::2]], dim=-1)}


def split_qkv(names: dict[str, Name], state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """bertforge state dict -> checkpoint tensors. The fused [3H, ...] qkv splits into its q, k, v rows."""
    out: dict[str, torch.Tensor] = {}
    for internal, name in names.items():
        tensor = state[internal].detach().cpu()
        if isinstance(name, tuple):
            for part, chunk in zip(name, tensor.chunk(3, dim=0)):
                out[prefix + part] = chunk.clone()  # own storage: safetensors refuses shared tensors
        else:
            out[prefix + name] = tensor.contiguous()
    return out
