"""ELECTRA: generator sizing, shared embeddings, labels of sampled tokens, no gradient through sampling."""

import pytest
import torch

from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.heads import PretrainingModel
from bertforge.objectives import ElectraObjective, MLMObjective, build_objective, generator_config
from test_objectives import make_batch, trains

TINY = PRESETS["test-tiny"].replace(model_type="electra", add_pooler=False)
NO_DROPOUT = TINY.replace(hidden_dropout=0.0, attention_dropout=0.0)


@pytest.mark.parametrize(
    "discriminator,fraction,generator",
    [
        ("electra-small-discriminator", 1.0, "electra-small-generator"),
        ("electra-base-discriminator", 1 / 3, "electra-base-generator"),
    ],
)
def test_generator_config_reproduces_the_released_generators(discriminator, fraction, generator):
    derived, released = generator_config(PRESETS[discriminator], fraction), PRESETS[generator]
    for name in ("hidden_size", "num_heads", "intermediate_size", "emb_size", "num_layers", "head_act", "vocab_size"):
        assert getattr(derived, name) == getattr(released, name), name


@pytest.mark.parametrize("fraction,embedding_size", [(0.25, 0), (0.5, 0), (0.25, 16)])
def test_generator_size_fraction_and_shared_embeddings(fraction, embedding_size):
    config = TINY.replace(embedding_size=embedding_size)
    objective = ElectraObjective.from_config(config, generator_fraction=fraction)
    gen, disc = objective.generator, objective.discriminator
    assert gen.config.hidden_size == round(config.hidden_size * fraction)
    assert gen.config.num_heads == round(config.num_heads * fraction)
    assert gen.config.intermediate_size == round(config.intermediate_size * fraction)
    assert gen.config.num_layers == config.num_layers
    g, d = gen.encoder.embeddings, disc.encoder.embeddings
    for name in ("word", "position", "segment", "norm"):
        for gp, dp in zip(getattr(g, name).parameters(), getattr(d, name).parameters()):
            assert gp is dp and gp.data_ptr() == dp.data_ptr()
    assert gen.embedding_weight is disc.embedding_weight  # the generator's MLM head is tied to the shared table
    # each model keeps its own E -> H projection
    assert g.project.weight.shape == (gen.config.hidden_size, config.emb_size)
    assert (d.project is None) == (config.emb_size == config.hidden_size)
    # a shared parameter is counted once
    total = sum(p.numel() for p in objective.parameters())
    shared = sum(p.numel() for n in ("word", "position", "segment", "norm") for p in getattr(d, n).parameters())
    assert total == sum(p.numel() for p in gen.parameters()) + sum(p.numel() for p in disc.parameters()) - shared
    assert objective.model is disc


def test_generator_config_rejects_bad_fractions_and_mismatched_embeddings():
    with pytest.raises(BertforgeError, match="fraction"):
        generator_config(TINY, 0.0)
    generator = PretrainingModel(TINY.replace(hidden_size=8, num_heads=1, embedding_size=16), heads=("mlm",))
    with pytest.raises(BertforgeError, match="emb_size"):
        ElectraObjective(generator, PretrainingModel(TINY, heads=("rtd",)))


def _capture_discriminator_input(objective):
    seen = []
    objective.discriminator.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    return seen


def test_a_sample_equal_to_the_original_is_labelled_original():
    torch.manual_seed(0)
    objective = ElectraObjective.from_config(TINY)
    batch = make_batch()
    chosen = batch["mlm_labels"] != -100
    target = 42
    batch["mlm_labels"] = batch["mlm_labels"].masked_fill(chosen, target)  # every masked original is 42
    with torch.no_grad():  # a deterministic generator: it always samples token 42 ...
        objective.generator.mlm.bias[target] = 1e4
    seen = _capture_discriminator_input(objective)
    _, metrics = objective(batch)
    original = torch.where(chosen, batch["mlm_labels"], batch["input_ids"])
    assert torch.equal(seen[-1], original)  # ... so the discriminator sees the original sequence
    assert metrics["replaced_fraction"] == 0.0 and metrics["gen_acc"] == 1.0

    with torch.no_grad():  # ... and now always token 43: every masked position is replaced
        objective.generator.mlm.bias[target + 1] = 2e4
    _, metrics = objective(batch)
    assert torch.equal(seen[-1], original.masked_fill(chosen, target + 1))
    real = batch["attention_mask"].bool()
    assert metrics["replaced_fraction"] == pytest.approx(chosen.sum().item() / real.sum().item())


def test_no_gradient_from_the_discriminator_into_the_generator():
    """Generator-only weights get the same gradient whatever lambda is (the RTD term never reaches them),
    and it equals the gradient of the generator's MLM loss alone; the shared embeddings do see lambda."""
    batch = make_batch()
    torch.manual_seed(0)
    objective = ElectraObjective.from_config(NO_DROPOUT)
    shared = {id(p) for p in objective.discriminator.parameters()}
    own = [(n, p) for n, p in objective.generator.named_parameters() if id(p) not in shared]
    word = objective.discriminator.embedding_weight

    def grads(rtd_weight):
        objective.rtd_weight = rtd_weight
        objective.zero_grad()
        torch.manual_seed(1)
        loss, metrics = objective(batch)
        loss.backward()
        assert metrics["replaced_fraction"] > 0  # the RTD term is live
        return {n: p.grad.clone() for n, p in own}, word.grad.clone()

    small, word_small = grads(1.0)
    large, word_large = grads(1000.0)
    for name, _ in own:
        torch.testing.assert_close(small[name], large[name], msg=name)
    assert not torch.allclose(word_small, word_large)

    objective.zero_grad()
    mlm, _ = MLMObjective(objective.generator)(batch)
    mlm.backward()
    for name, p in own:
        torch.testing.assert_close(p.grad, small[name], msg=name)


def test_sampling_is_reproducible_under_a_seed():
    objective = ElectraObjective.from_config(TINY).eval()
    batch = make_batch()
    seen = _capture_discriminator_input(objective)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(objective(batch)[1])
    assert runs[0] == runs[1] and torch.equal(seen[0], seen[1])
    assert not torch.equal(seen[0], seen[2])


def test_electra_trains():
    torch.manual_seed(0)
    objective = build_objective(("electra",), TINY, rtd_weight=50.0)
    trains(objective, make_batch(), ["gen_mlm_loss", "gen_acc", "rtd_loss", "rtd_acc", "replaced_fraction"])


def test_inverse_cdf_sampling_matches_the_distribution():
    """sample_categorical against its probabilities: a chi-square goodness-of-fit test with a fixed seed, and
    zero-probability entries never drawn."""
    from scipy.stats import chisquare

    from bertforge.objectives.base import sample_categorical

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50) * 2, -1)
    probs[[3, 17]] = 0.0  # impossible tokens
    probs = probs / probs.sum()
    draws = sample_categorical(probs.expand(200_000, -1).contiguous())
    counts = torch.bincount(draws, minlength=50).double()
    assert counts[3] == 0 and counts[17] == 0
    keep = probs > 0
    p64 = probs[keep].double()
    expected = p64 / p64.sum() * counts.sum()
    assert chisquare(counts[keep].numpy(), expected.numpy()).pvalue > 0.01
    one_hot = torch.zeros(4, 10)
    one_hot[:, 6] = 1.0
    assert sample_categorical(one_hot).tolist() == [6, 6, 6, 6]
