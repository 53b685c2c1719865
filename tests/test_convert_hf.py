"""Checkpoint interop with transformers, both ways: same outputs within 1e-5 (fp32, padded batches).

transformers -> bertforge: a randomly initialised transformers model (every parameter perturbed, so a
swapped or dropped tensor cannot hide behind zero biases and unit LayerNorms) saved with its own
save_pretrained, loaded by bertforge. bertforge -> transformers: a random bertforge model saved by
bertforge, loaded by transformers' own classes with no missing or unexpected weights.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from bertforge.auto import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining  # noqa: E402
from bertforge.convert import hf  # noqa: E402
from bertforge.heads import PretrainingModel  # noqa: E402

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)

# name -> (transformers class, config class, config kwargs, bertforge heads of that class)
CASES = {
    "bert": ("BertForPreTraining", "BertConfig", TINY, ("mlm", "pair")),
    "bert-mlm-gelu-new": ("BertForMaskedLM", "BertConfig", {**TINY, "hidden_act": "gelu_new"}, ("mlm",)),
    # RoBERTa: positions counted from padding_idx + 1, one segment, its own LayerNorm eps;
    # relu in the encoder checks that the LM head keeps its hard-coded GELU.
    "roberta": ("RobertaForMaskedLM", "RobertaConfig",
                {**TINY, "max_position_embeddings": 66, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
                 "hidden_act": "relu"}, ("mlm",)),
    # ALBERT: factorized embeddings (E=16 < H=32), one layer shared by all 3 layers, SOP head.
    "albert": ("AlbertForPreTraining", "AlbertConfig",
               {**TINY, "num_hidden_layers": 3, "embedding_size": 16, "hidden_act": "gelu_new"}, ("mlm", "pair")),
    "albert-unshared": ("AlbertForMaskedLM", "AlbertConfig",
                        {**TINY, "embedding_size": 16, "num_hidden_groups": 2}, ("mlm",)),
    # ELECTRA: a generator narrower than its discriminator, both with E=16 embeddings.
    "electra-generator": ("ElectraForMaskedLM", "ElectraConfig",
                          {**TINY, "embedding_size": 16, "hidden_size": 16, "num_attention_heads": 2,
                           "intermediate_size": 24}, ("mlm",)),
    "electra-discriminator": ("ElectraForPreTraining", "ElectraConfig", {**TINY, "embedding_size": 16}, ("rtd",)),
    "distilbert": ("DistilBertForMaskedLM", "DistilBertConfig",
                   dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64),
                   ("mlm",)),
    "roformer": ("RoFormerForMaskedLM", "RoFormerConfig", TINY, ("mlm",)),
    "roformer-factorized-rotary-value": ("RoFormerForMaskedLM", "RoFormerConfig",
                                         {**TINY, "embedding_size": 16, "rotary_value": True}, ("mlm",)),
}
LOGITS = {"mlm": ("logits", "prediction_logits"), "pair": ("seq_relationship_logits", "sop_logits"), "rtd": ("logits",)}


def hf_model(case):
    cls, config_cls, kwargs, _ = CASES[case]
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config)
    perturb(model)
    return model.eval()


def perturb(model):
    # Fixed tables (RoFormer's sinusoids) are not trainable and stay as they are.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)


def padded_batch(vocab, pad_id, segments: bool, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    for row, length in ((1, 6), (2, 9)):
        ids[row, length:] = pad_id
        mask[row, length:] = 0
    types = torch.zeros_like(ids)
    if segments:
        types[:, 5:] = 1
    return ids, mask, types


def hf_outputs(model, ids, mask, types, segments):
    kwargs = dict(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    if segments:
        kwargs["token_type_ids"] = types
    with torch.no_grad():
        return model(**kwargs)


def assert_same(ours: dict, theirs, heads):
    torch.testing.assert_close(ours["encoder"].last_hidden_state, theirs.hidden_states[-1], atol=1e-5, rtol=0)
    for head in heads:
        name = next(n for n in LOGITS[head] if getattr(theirs, n, None) is not None)
        torch.testing.assert_close(ours[f"{head}_logits"], getattr(theirs, name), atol=1e-5, rtol=0)


def case_inputs(case, config):
    """ids, mask, segment ids (two segments where the model has them), whether the model takes segments."""
    ids, mask, types = padded_batch(config.vocab_size, config.pad_token_id, config.type_vocab_size > 1)
    return ids, mask, types, config.type_vocab_size > 0


@pytest.mark.parametrize("case", CASES)
def test_transformers_to_bertforge(case, tmp_path):
    theirs = hf_model(case)
    theirs.save_pretrained(tmp_path)
    ours = AutoModelForPreTraining.from_pretrained(tmp_path)
    heads = CASES[case][3]
    assert ours.head_names == heads
    ids, mask, types, segments = case_inputs(case, ours.config)
    with torch.no_grad():
        out = ours(ids, mask, types if segments else None)
    assert_same(out, hf_outputs(theirs, ids, mask, types, segments), heads)
    # the bare encoder from the same directory computes the same states
    encoder = AutoModel.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids, mask, types if segments else None).last_hidden_state, out["encoder"].last_hidden_state,
                                   atol=0, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_bertforge_to_transformers(case, tmp_path):
    cls, config_cls, kwargs, heads = CASES[case]
    config = hf.config_from_hf(getattr(transformers, config_cls)(**kwargs).to_dict(), source=case)
    # transformers' ...ForMaskedLM classes have no pooler; mirror the class exactly
    config = config.replace(add_pooler=config.add_pooler and "pair" in heads)
    torch.manual_seed(0)
    ours = PretrainingModel(config, heads).eval()
    perturb(ours)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == [cls] and saved["bertforge"]["layout"] == "hf"
    theirs, info = getattr(transformers, cls).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask, types, segments = case_inputs(case, config)
    with torch.no_grad():
        out = ours(ids, mask, types if segments else None)
    assert_same(out, hf_outputs(theirs.eval(), ids, mask, types, segments), heads)
    # transformers' AutoModel reads the directory too, and its encoder agrees
    base = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(base).__name__ == hf.ARCHITECTURES[config.model_type][()]
    with torch.no_grad():
        their_base = base(**{k: v for k, v in dict(input_ids=ids, attention_mask=mask, token_type_ids=types).items()
                             if segments or k != "token_type_ids"})
    torch.testing.assert_close(out["encoder"].last_hidden_state, their_base.last_hidden_state, atol=1e-5, rtol=0)
    # and bertforge reads back exactly what it wrote
    again = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert again.config == config
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bertforge_encoder_saves_as_transformers_base_model(tmp_path):
    config = hf.config_from_hf(transformers.BertConfig(**TINY).to_dict(), source="bert")
    torch.manual_seed(0)
    ours = PretrainingModel(config, ()).encoder.eval()
    perturb(ours)
    ours.save_pretrained(tmp_path)
    theirs, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask, types = padded_batch(99, 0, True)
    with torch.no_grad():
        mine = ours(ids, mask, types)
        other = theirs.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(mine.last_hidden_state, other.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.pooler_output, other.pooler_output, atol=1e-5, rtol=0)


def test_config_defaults_match_transformers():
    """Keys a config.json leaves out take the transformers config class's defaults (NEZHA: checked in
    scripts/verify_nezha_parity.sh, since transformers 5 no longer ships it)."""
    classes = {"bert": "BertConfig", "roberta": "RobertaConfig", "albert": "AlbertConfig", "electra": "ElectraConfig",
               "distilbert": "DistilBertConfig", "roformer": "RoFormerConfig"}
    for model_type, cls in classes.items():
        theirs = getattr(transformers, cls)().to_dict()
        for key, value in hf.HF_SPECS[model_type].defaults.items():
            if key == "embedding_size" and value is None:  # RoFormer: None means hidden_size
                value = theirs["hidden_size"]
            assert theirs[key] == value, (model_type, key)


def test_electra_generator_and_discriminator_by_task(tmp_path):
    gen_dir, disc_dir = tmp_path / "gen", tmp_path / "disc"
    hf_model("electra-generator").save_pretrained(gen_dir)
    hf_model("electra-discriminator").save_pretrained(disc_dir)
    assert AutoModelForMaskedLM.from_pretrained(gen_dir).head_names == ("mlm",)
    assert AutoModelForPreTraining.from_pretrained(disc_dir).head_names == ("rtd",)
    generator, discriminator = AutoConfig.from_pretrained(gen_dir), AutoConfig.from_pretrained(disc_dir)
    assert generator.hidden_size < discriminator.hidden_size and generator.emb_size == discriminator.emb_size == 16
