"""Task heads: CRF algebra and constraints, span decoding, and that every head learns on a tiny batch."""

import itertools
import math

import numpy as np
import pytest
import torch

from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.features import ScalarMix, layerwise_lr_groups, mean_pool
from bertforge.modeling import Encoder
from bertforge.tasks import (
    CRF, MODELS, Span, TaskConfig, TaskObjective, allowed_transitions, best_spans, build_task_model,
    decode_answers, entities, full_tag_set, pack, tag_scheme,
)

BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
BIOES = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "E-LOC", "S-LOC"]
BMES = ["O", "B-PER", "M-PER", "E-PER", "S-PER"]


def valid(tags: list[str]) -> bool:
    allowed, start, end = allowed_transitions(BIO if tag_scheme(tags) == "BIO" else BIOES)
    labels = BIO if tag_scheme(tags) == "BIO" else BIOES
    ids = [labels.index(t) for t in tags]
    return bool(start[ids[0]] and end[ids[-1]] and all(allowed[a, b] for a, b in zip(ids, ids[1:])))


def test_tag_schemes_and_entities():
    assert tag_scheme(BIO) == "BIO" and tag_scheme(BIOES) == "BIOES" and tag_scheme(BMES) == "BMES"
    assert entities(["B-PER", "M-PER", "E-PER", "O", "S-LOC"]) == [("PER", 0, 2), ("LOC", 4, 4)]
    allowed, start, end = allowed_transitions(BIO)
    assert not allowed[BIO.index("O"), BIO.index("I-PER")]
    assert not allowed[BIO.index("B-LOC"), BIO.index("I-PER")]
    assert allowed[BIO.index("B-PER"), BIO.index("I-PER")] and not start[BIO.index("I-LOC")]
    allowed, start, end = allowed_transitions(BMES)
    assert not allowed[BMES.index("B-PER"), BMES.index("O")] and not end[BMES.index("B-PER")]
    assert allowed[BMES.index("M-PER"), BMES.index("E-PER")] and allowed[BMES.index("E-PER"), BMES.index("S-PER")]


def test_crf_likelihood_normalises_over_all_paths():
    torch.manual_seed(0)
    crf = CRF(BIO)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    em = torch.randn(1, 3, len(BIO))
    mask = torch.ones(1, 3, dtype=torch.bool)
    total = sum(
        math.exp(crf.log_likelihood(em, torch.tensor([path]), mask).item())
        for path in itertools.product(range(len(BIO)), repeat=3)
    )
    assert total == pytest.approx(1.0, rel=1e-4)
    # A shorter, masked sequence equals the same sequence without padding.
    short = crf.log_likelihood(em[:, :2], torch.tensor([[1, 2]]), mask[:, :2])
    padded = crf.log_likelihood(em, torch.tensor([[1, 2, 0]]), torch.tensor([[True, True, False]]))
    assert torch.allclose(short, padded)


@pytest.mark.parametrize("labels", [BIO, BIOES])
def test_crf_viterbi_is_the_best_valid_path_and_never_invalid(labels):
    torch.manual_seed(1)
    crf = CRF(labels)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_(std=2.0)
    allowed, start, end = allowed_transitions(labels)
    em = torch.randn(64, 6, len(labels)) * 3
    lengths = torch.randint(1, 7, (64,))
    mask = torch.arange(6) < lengths[:, None]
    paths = crf.decode(em, mask)
    for path, n in zip(paths, lengths.tolist()):
        assert len(path) == n
        assert start[path[0]] and end[path[-1]] and all(allowed[a, b] for a, b in zip(path, path[1:]))
        assert not any(labels[a] == "O" and labels[b].startswith("I-") for a, b in zip(path, path[1:]))
    # Exhaustive check on a short sequence: Viterbi = the highest-scoring valid path.
    i = int(torch.nonzero(lengths == 3)[0])
    best = max(
        (p for p in itertools.product(range(len(labels)), repeat=3)
         if start[p[0]] and end[p[-1]] and allowed[p[0], p[1]] and allowed[p[1], p[2]]),
        key=lambda p: crf.log_likelihood(em[i:i + 1, :3], torch.tensor([p]), mask[i:i + 1, :3]).item(),
    )
    assert tuple(paths[i]) == best


def test_pack_moves_kept_positions_left_in_order():
    x = torch.arange(12).view(2, 6)
    keep = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    packed, mask = pack(x, keep)
    assert packed[0].tolist() == [1, 3, 4] and packed[1, 0] == 6
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_best_spans_respects_context_order_and_length():
    offsets = [None, None, (0, 2), (3, 5), (6, 9), (10, 12), None]
    start = np.array([9, 0, 1, 5, 0, 0, 9.0])
    end = np.array([9, 0, 0, 0, 4, 1, 9.0])
    spans = best_spans(start, end, offsets, n_best=3, max_answer_length=5)
    assert (spans[0].start, spans[0].end) == (3, 9)  # tokens 3..4; the [CLS]/[SEP] scores are never used
    assert all(s.start < s.end for s in spans)
    assert [(s.start, s.end) for s in best_spans(start, end, offsets, 3, max_answer_length=1)][0] == (3, 5)


def test_decode_answers_prefers_the_window_holding_the_whole_answer():
    # Context "abc defgh ijk": the answer "defgh ijk" (chars 4..13) crosses the end of window 1, which
    # only sees "abc defgh"; window 2 holds it whole and scores it best.
    context = "abc defgh ijk"
    w1 = best_spans(np.array([0, 0, 3.0, 0]), np.array([0, 0, 1.0, 0]), [None, (0, 3), (4, 9), None], 5, 10)
    w2 = best_spans(np.array([0, 4.0, 0, 0]), np.array([0, 0, 4.0, 0]), [None, (4, 9), (10, 13), None], 5, 10)
    answers = decode_answers([w1, w2], context, n_best=3)
    assert answers[0]["answer"] == "defgh ijk" and (answers[0]["start"], answers[0]["end"]) == (4, 13)
    assert set(answers[0]) == {"answer", "score", "start", "end"}
    # scores are a softmax over every merged candidate: they sum to 1 over all of them, and an answer's
    # score does not depend on how many are asked for (a lone answer used to get 1.0)
    every = decode_answers([w1, w2], context, n_best=100)
    assert len(every) == 5 and sum(a["score"] for a in every) == pytest.approx(1.0)
    assert decode_answers([w1, w2], context, n_best=1) == answers[:1] == every[:1] and answers[0]["score"] < 1


def test_decode_answers_chinese_and_duplicate_spans():
    context = "北京是中国的首都"
    offsets = [None] + [(i, i + 1) for i in range(len(context))] + [None]
    start = np.zeros(len(offsets))
    end = np.zeros(len(offsets))
    start[1], end[2] = 5.0, 5.0  # 北京
    spans = best_spans(start, end, offsets, 5, 4)
    answers = decode_answers([spans, [Span(1.0, 0, 2)]], context, n_best=5)
    assert answers[0] == {"answer": "北京", "score": answers[0]["score"], "start": 0, "end": 2}
    assert len({(a["start"], a["end"]) for a in answers}) == len(answers)


def test_decode_answers_trims_whitespace_of_byte_bpe_offsets():
    answers = decode_answers([[Span(2.0, 3, 9)]], "in  Paris now", n_best=1)
    assert answers[0]["answer"] == "Paris" and (answers[0]["start"], answers[0]["end"]) == (4, 9)


def test_scalar_mix_and_mean_pool():
    mix = ScalarMix(3)
    hs = [torch.full((1, 2, 4), float(i)) for i in range(3)]
    assert torch.allclose(mix(hs), torch.full((1, 2, 4), 1.0))  # uniform weights at start
    h = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert mean_pool(h, torch.tensor([[1, 1, 0]])).item() == 2.0


def test_layerwise_lr_groups_decay_from_head_to_embeddings():
    cfg = PRESETS["test-tiny"]
    model = build_task_model(Encoder(cfg), TaskConfig("classify", labels=("a", "b")))
    groups = layerwise_lr_groups(model, model.encoder, decay=0.5, weight_decay=0.01)
    by_scale = {g["lr_scale"] for g in groups}
    assert by_scale == {0.5 ** k for k in range(cfg.num_layers + 2)}
    classifier = next(g for g in groups if any(p is model.classifier.weight for p in g["params"]))
    embeddings = next(g for g in groups if any(p is model.encoder.embeddings.word.weight for p in g["params"]))
    assert classifier["lr_scale"] == 1.0 and embeddings["lr_scale"] == 0.5 ** (cfg.num_layers + 1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 0.0 for g in groups if g["params"][0].ndim == 1)


def _batch(task: str, b: int = 4, n: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (b, n), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones(b, n, dtype=torch.long), "token_type_ids": torch.zeros_like(ids)}
    if task in ("classify", "pair"):
        batch["labels"] = torch.tensor([0, 1, 0, 1])
    elif task == "ner":
        starts = torch.rand(b, n, generator=g) < 0.7
        starts[:, 0] = False
        labels = torch.randint(0, len(BIO), (b, n), generator=g)
        batch["word_starts"], batch["labels"] = starts, labels.masked_fill(~starts, -100)
    elif task == "qa":
        batch["start_positions"], batch["end_positions"] = torch.tensor([2, 3, 0, 5]), torch.tensor([4, 3, 0, 6])
    elif task == "choice":
        batch = {k: v.view(2, 2, n) for k, v in batch.items() if v.dim() == 2}
        batch["labels"] = torch.tensor([1, 0])
    return batch


@pytest.mark.parametrize("task,options", [
    ("classify", {}), ("pair", {"pooling": "mean"}), ("classify", {"layer_mix": True}), ("ner", {}),
    ("ner", {"crf": True}), ("qa", {}), ("choice", {}),
])
def test_training_lowers_the_loss(task, options):
    torch.manual_seed(0)
    labels = BIO if task == "ner" else ("neg", "pos") if task in ("classify", "pair") else ()
    model = build_task_model(Encoder(PRESETS["test-tiny"]), TaskConfig(task, labels=tuple(labels), **options))
    objective = TaskObjective(model)
    batch = _batch(task)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, metrics = objective(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first
    model.eval()
    out = model(batch)
    if task == "ner":
        tags = model.decode(out["logits"], batch["word_starts"])
        assert [len(t) for t in tags] == batch["word_starts"].sum(1).tolist()
    elif task == "qa":
        assert out["start_logits"].shape == batch["input_ids"].shape
    else:
        assert out["logits"].shape == (batch["labels"].shape[0], 2)


def test_frozen_encoder_trains_only_the_head():
    model = build_task_model(Encoder(PRESETS["test-tiny"]), TaskConfig("classify", labels=("a", "b"), frozen=True, layer_mix=True))
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not model.encoder.training
    for _ in range(3):
        loss = model(_batch("classify"))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert model.mix.weights.grad is not None


def test_task_config_roundtrip_and_errors(tmp_path):
    cfg = TaskConfig("ner", labels=tuple(BMES), crf=True, max_length=64)
    cfg.save(tmp_path / "task.json")
    assert TaskConfig.load(tmp_path / "task.json") == cfg
    with pytest.raises(BertforgeError, match="crf"):
        TaskConfig("classify", labels=("a", "b"), crf=True)
    with pytest.raises(BertforgeError, match="pooling"):
        TaskConfig("classify", labels=("a", "b"), pooling="max")
    with pytest.raises(BertforgeError, match="doc_stride"):
        TaskConfig("qa", max_length=64, doc_stride=60)
    assert set(MODELS) == {"classify", "pair", "ner", "qa", "choice"}


def test_full_tag_set_completes_the_scheme_per_entity_type():
    assert full_tag_set(["O", "B-PER", "E-PER", "M-LOC"]) == (
        "O", "B-LOC", "M-LOC", "E-LOC", "S-LOC", "B-PER", "M-PER", "E-PER", "S-PER")
    assert full_tag_set(["B-X", "O"]) == ("O", "B-X", "I-X")
