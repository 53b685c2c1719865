"""The encoder itself: attention paths agree, sharing really shares, shapes are right."""

import pytest
import torch

from bertforge.config import PRESETS
from bertforge.heads import PretrainingModel
from bertforge.modeling import Encoder

TINY = PRESETS["test-tiny"]


def batch(b=3, n=9, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, n), generator=g)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("position_type", ["absolute", "relative", "rotary"])
@pytest.mark.parametrize("embedding_size", [0, 16])
def test_sdpa_equals_eager(position_type, embedding_size):
    torch.manual_seed(0)
    model = Encoder(TINY.replace(position_type=position_type, embedding_size=embedding_size)).eval()
    ids, mask = batch()
    fast = model(ids, mask, output_hidden_states=True)
    model.attention_impl = "eager"
    slow = model(ids, mask, output_hidden_states=True)
    assert fast.last_hidden_state.shape == (3, 9, 32)
    assert len(fast.hidden_states) == TINY.num_layers + 1
    torch.testing.assert_close(fast.last_hidden_state, slow.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.pooler_output, slow.pooler_output, atol=1e-5, rtol=0)


def test_a_mask_without_padding_is_dropped_and_changes_nothing():
    torch.manual_seed(0)
    model = Encoder(TINY).eval()
    ids, _ = batch()
    ones = torch.ones_like(ids)
    ctx = model.attention_context(ids, ones, model.default_position_ids(ids, ones))
    assert ctx.mask is None  # SDPA then adds no mask to every score
    padded = ones.clone()
    padded[0, -2:] = 0
    assert model.attention_context(ids, padded, model.default_position_ids(ids, padded)).mask is not None
    for impl in ("sdpa", "eager"):
        model.attention_impl = impl
        torch.testing.assert_close(model(ids, ones).last_hidden_state, model(ids, None).last_hidden_state, atol=0, rtol=0)


@pytest.mark.parametrize(
    "sharing,n_attention,n_ffn", [("none", 4, 4), ("all", 1, 1), ("attention", 1, 4), ("ffn", 4, 1)]
)
def test_sharing_shares_storage_and_gradients(sharing, n_attention, n_ffn):
    config = TINY.replace(num_layers=4, sharing=sharing)
    model = Encoder(config)
    assert len(model.attentions) == n_attention and len(model.ffns) == n_ffn
    # storage identity: layer 0 and layer 3 use the very same tensors when shared
    a0, f0 = model.layer(0)
    a3, f3 = model.layer(3)
    assert (a0.qkv.weight.data_ptr() == a3.qkv.weight.data_ptr()) == (n_attention == 1)
    assert (f0.up.weight.data_ptr() == f3.up.weight.data_ptr()) == (n_ffn == 1)
    # parameter count: exactly the distinct modules
    per_attention = sum(p.numel() for p in a0.parameters())
    per_ffn = sum(p.numel() for p in f0.parameters())
    rest = sum(p.numel() for p in model.embeddings.parameters()) + sum(p.numel() for p in model.pooler.parameters())
    assert model.num_parameters() == rest + n_attention * per_attention + n_ffn * per_ffn
    # gradients from every layer reach the shared weights: the shared gradient equals the sum of the
    # per-layer gradients of an unshared copy whose layers all hold the shared values
    unshared = Encoder(config.replace(sharing="none"))
    with torch.no_grad():
        unshared.embeddings.load_state_dict(model.embeddings.state_dict())
        unshared.pooler.load_state_dict(model.pooler.state_dict())
        for i in range(4):
            attention, ffn = model.layer(i)
            unshared.attentions[i].load_state_dict(attention.state_dict())
            unshared.ffns[i].load_state_dict(ffn.state_dict())
    ids, mask = batch()
    for m in (model, unshared):
        m.eval()
        m(ids, mask).last_hidden_state.pow(2).sum().backward()
    for index, modules, ref_modules in (
        (model.attention_index, model.attentions, unshared.attentions),
        (model.ffn_index, model.ffns, unshared.ffns),
    ):
        for j, module in enumerate(modules):
            users = [i for i in range(4) if index[i] == j]
            for name, p in module.named_parameters():
                expected = sum(dict(ref_modules[i].named_parameters())[name].grad for i in users)
                torch.testing.assert_close(p.grad, expected, atol=1e-6, rtol=1e-4)


def test_pretraining_model_heads_and_tied_embeddings():
    config = TINY.replace(embedding_size=16)
    model = PretrainingModel(config, heads=("mlm", "pair", "rtd")).eval()
    ids, mask = batch()
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, 2] = positions[2, 4] = True
    out = model(ids, mask, mlm_positions=positions)
    assert out["mlm_logits"].shape == (2, 100)
    assert out["pair_logits"].shape == (3, 2)
    assert out["rtd_logits"].shape == (3, 9)
    full = model(ids, mask)["mlm_logits"]
    torch.testing.assert_close(full[positions], out["mlm_logits"])
    # tied: the MLM head owns no V x E matrix of its own
    assert all(p.shape != (100, 16) for p in model.mlm.parameters())
