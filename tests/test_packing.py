"""Packed pretraining batches: placement, masks equal to the unpacked stream's, and the encoder giving each
packed sequence exactly the output it gets alone (absolute, RoBERTa-offset, rotary and NEZHA positions)."""

import numpy as np
import pytest
import torch

from bertforge.config import PRESETS
from bertforge.data.builders import DocSentences, FullSentences, SOPPairs
from bertforge.data.collate import PretrainingStream
from bertforge.data.corpus import build_corpus
from bertforge.data.masking import IGNORE, MASKING, Masker, mask_keys
from bertforge.data.packing import PackedStream, best_fit
from bertforge.data.tokenizer_train import train_tokenizer
from bertforge.errors import BertforgeError
from bertforge.heads import PretrainingModel
from bertforge.modeling import Encoder, packed_position_ids
from bertforge.objectives.mlm import MLMObjective

WORDS = "the quick brown fox jumps over lazy dog playing played running unbelievable house garden music".split()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packing")
    rng = np.random.default_rng(0)
    sentence = lambda: " ".join(rng.choice(WORDS, rng.integers(3, 12))).capitalize() + "."  # noqa: E731
    docs = [[" ".join(sentence() for _ in range(rng.integers(1, 4))) for _ in range(rng.integers(1, 6))]
            for _ in range(400)]
    text = tmp / "docs.txt"
    text.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    train_tokenizer("wordpiece", [text], 150, out=tmp / "tok", progress=False)
    return build_corpus(tmp / "store", tmp / "tok", [str(text)], document_per="block", workers=0,
                        validation_fraction=0.1, progress=False)


def test_best_fit_places_every_item_without_overlap():
    lengths = np.random.default_rng(1).integers(1, 65, 5000)
    row, offset = best_fit(lengths, 64, window=512)
    used = np.zeros((row.max() + 1, 64), dtype=int)
    for r, o, n in zip(row, offset, lengths):
        assert o + n <= 64
        used[r, o:o + n] += 1
    assert used.max() == 1
    assert 1 - lengths.sum() / used.size < 0.02
    with pytest.raises(BertforgeError, match="does not fit"):
        best_fit(np.array([65]), 64)


def test_packed_stream_rows_hold_the_sequences_with_their_masks(store):
    masker = Masker.from_manifest(MASKING["wwm"], store.manifest)
    packed = PackedStream(store, DocSentences(max_len=64), masker, batch_size=8, seed=3)
    plain = PretrainingStream(store, DocSentences(max_len=64), masker, batch_size=8, seed=3,
                              examples=packed.examples)
    assert packed.padding_fraction() < 0.05
    seq, row, offset = packed._epoch_plan(0)
    batch = packed.batch_at(0, 1)
    take = (row >= 8) & (row < 16)
    alone = plain.collator.mask(packed.examples.batch(seq[take], 1), mask_keys(3, 0, seq[take]))
    assert batch["input_ids"].shape == (8, 64)
    for j, (r, o) in enumerate(zip(row[take] - 8, offset[take])):
        n = int(alone["attention_mask"][j].sum())
        for key in ("input_ids", "mlm_labels", "token_type_ids"):
            assert torch.equal(batch[key][r, o:o + n], alone[key][j, :n]), key
        numbers = batch["attention_mask"][r]
        assert (numbers[o:o + n] == numbers[o]).all() and numbers[o] >= 1
    assert (batch["attention_mask"] > 0).sum() == (batch["input_ids"] != store.manifest["special_ids"]["pad"]).sum()
    # resumable: a fresh stream loaded with the state yields the same next batch
    next(packed), next(packed)
    again = PackedStream(store, DocSentences(max_len=64), masker, batch_size=8, seed=3, examples=packed.examples)
    again.load_state_dict(packed.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(next(packed).values(), next(again).values()))


def test_pair_builders_are_refused(store):
    masker = Masker.from_manifest(MASKING["bert"], store.manifest)
    with pytest.raises(BertforgeError, match="NSP/SOP"):
        PackedStream(store, SOPPairs(max_len=64), masker, batch_size=4)


def test_packed_position_ids_restart_per_sequence():
    numbers = torch.tensor([[1, 1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 3, 3, 0]])
    assert packed_position_ids(numbers).tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 0, 1, 2, 0, 1, 0]]


CONFIGS = {
    "absolute": PRESETS["test-tiny"],
    "roberta-offset": PRESETS["test-tiny"].replace(pad_token_id=1, position_offset=2, max_position_embeddings=66),
    "rotary": PRESETS["test-tiny"].replace(position_type="rotary", rotary_value=True),
    "relative": PRESETS["test-tiny"].replace(position_type="relative", max_relative_position=4),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_row_equals_sequences_run_alone(name, impl):
    config = CONFIGS[name]
    torch.manual_seed(0)
    model = Encoder(config).eval()
    model.attention_impl = impl
    pad = config.pad_token_id
    lengths = [5, 9, 3]
    seqs = [torch.randint(3, config.vocab_size, (n,)) for n in lengths]
    row = torch.full((1, 20), pad)
    numbers = torch.zeros(1, 20, dtype=torch.long)
    o = 0
    for k, s in enumerate(seqs):
        row[0, o:o + len(s)], numbers[0, o:o + len(s)] = s, k + 1
        o += len(s)
    with torch.no_grad():
        packed = model(row, numbers).last_hidden_state[0]
        o = 0
        for s in seqs:
            alone = model(s[None]).last_hidden_state[0]
            torch.testing.assert_close(packed[o:o + len(s)], alone, atol=1e-5, rtol=1e-5)
            o += len(s)


def test_packed_batch_gives_the_unpacked_mlm_loss(store):
    """The same sequences with the same masks: one packed batch and one padded batch, same loss."""
    masker = Masker.from_manifest(MASKING["bert"], store.manifest)
    packed = PackedStream(store, FullSentences(max_len=32), masker, batch_size=4, seed=0)
    seq, row, _ = packed._epoch_plan(0)
    take = row < 4
    padded = PretrainingStream(store, None, masker, batch_size=4, examples=packed.examples).collator.mask(
        packed.examples.batch(seq[take]), mask_keys(0, 0, seq[take]))
    config = PRESETS["test-tiny"].replace(vocab_size=store.manifest["vocab_size"],
                                          pad_token_id=store.manifest["special_ids"]["pad"])
    torch.manual_seed(0)
    objective = MLMObjective(PretrainingModel(config, heads=("mlm",))).eval()
    batch = packed.batch_at(0, 0)
    assert (batch["mlm_labels"] != IGNORE).sum() == (padded["mlm_labels"] != IGNORE).sum() > 0
    with torch.no_grad():
        a, b = objective(batch)[0], objective(padded)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
