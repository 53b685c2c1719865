"""Run a task model over a dataset, decode its outputs into predictions and score them.

``predict(model, tok, data)`` returns one prediction per example, in order:

    classify / pair   {"label": str, "score": float}             (score = softmax probability)
    ner               {"tags": [tag per word]}
    qa                {"id": str, "answer": str, "score": float, "start": int, "end": int}
                      (character offsets into the context; answer "" when no span was found)

``evaluate`` adds the task's metrics (metrics.py) against the gold labels / tags / reference answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import BertforgeError
from ..metrics import classification_metrics, ner_metrics, qa_metrics
from ..taskdata import Skips, TaskData
from ..tasks import TaskModel, best_spans, decode_answers
from .encode import collate, encode_qa, encode_texts, encode_tokens


def _map_batches(features: list[dict], batch_size: int, pad_id: int, device, progress: str | None,
                 fn: Callable[[list[dict], dict], list]) -> list:
    """``fn(chunk, batch)`` -> one result per feature of the chunk, over batches of features of similar
    length (each padded only to its own longest: random order padded task data 43-55%); the results come
    back in the order of ``features``."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    results: list = [None] * len(features)
    starts = range(0, len(order), batch_size)
    for i in tqdm(starts, desc=progress, disable=progress is None or len(starts) < 2, leave=False):
        index = order[i:i + batch_size]
        chunk = [features[j] for j in index]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        for j, result in zip(index, fn(chunk, batch), strict=True):
            results[j] = result
    return results


def check_labels(model: TaskModel, data: TaskData) -> None:
    """Gold labels the model has never seen cannot be scored fairly: refuse them, naming the row."""
    known = set(model.task.labels)
    for ex in data.examples:
        gold = ex.tags if data.task == "ner" else [ex.label] if data.task != "qa" else []
        for label in gold or ():
            if label is not None and label not in known:
                what = "tag" if data.task == "ner" else "label"
                raise BertforgeError(
                    f"{ex.source}: {what} {label!r} never appears in the training data "
                    f"(the model knows: {', '.join(model.task.labels)})"
                )


@torch.no_grad()
def predict(model: TaskModel, tok, data: TaskData, batch_size: int = 32, progress: str | None = None) -> tuple[list[dict], Skips]:
    task = model.task
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    skips = Skips()
    out: list[dict] = []
    try:
        if task.task in ("classify", "pair"):
            features = encode_texts(tok, data.examples, None, task.max_length, skips)

            def labelled(chunk, batch):
                score, index = model(batch)["logits"].float().softmax(-1).max(-1)
                return [{"label": task.labels[i], "score": s} for i, s in zip(index.tolist(), score.tolist())]
            out = _map_batches(features, batch_size, tok.pad_token_id, device, progress, labelled)
        elif task.task == "ner":
            features = encode_tokens(tok, data.examples, None, task.max_length, skips)
            paths = _map_batches(features, batch_size, tok.pad_token_id, device, progress,
                                 lambda chunk, batch: model.decode(model(batch)["logits"], batch["word_starts"]))
            tags: list[list[str]] = [[] for _ in data.examples]
            for f, path in zip(features, paths):  # in order: a long sentence's windows append in turn
                decoded = iter(path)  # words without a token are "O"
                tags[f["example"]] += ["O" if t is None else task.labels[next(decoded)] for t in f["first_token"]]
            out = [{"tags": t} for t in tags]
        elif task.task == "qa":
            features = encode_qa(tok, data.examples, task, skips, train=False)

            def spans(chunk, batch):
                logits = model(batch)
                starts, ends = logits["start_logits"].cpu().numpy(), logits["end_logits"].cpu().numpy()
                found = []
                for f, s, e in zip(chunk, starts, ends):
                    n = len(f["input_ids"])
                    found.append(best_spans(s[:n], e[:n], f["offsets"], task.n_best, task.max_answer_length))
                return found
            windows: dict[int, list] = defaultdict(list)
            found = _map_batches(features, batch_size, tok.pad_token_id, device, progress, spans)
            for f, best in zip(features, found):  # in order, as before the batches were sorted
                windows[f["example"]].append(best)
            for i, ex in enumerate(data.examples):
                answers = decode_answers(windows.get(i, []), ex.context, 1)
                best = answers[0] if answers else {"answer": "", "score": 0.0, "start": 0, "end": 0}
                out.append({"id": ex.id, **best})
        else:
            raise BertforgeError(f"predicting task {task.task!r} from a dataset is not supported")
    finally:
        model.train(was_training)
    return out, skips


_GOLD = {"ner": "a tag per token", "qa": "reference answers", "classify": "a label", "pair": "a label"}


def require_labels(data: TaskData) -> list:
    """The examples of ``data`` that carry gold labels; an error when none do (scores of nothing print as 0.0)."""
    gold = {"qa": lambda ex: bool(ex.references), "ner": lambda ex: ex.tags is not None}.get(
        data.task, lambda ex: ex.label is not None)
    labelled = [ex for ex in data.examples if gold(ex)]
    if not labelled:
        raise BertforgeError(f"{data.name}: no labelled examples to score among {len(data.examples)} read "
                             f"(expected {_GOLD.get(data.task, 'a label')} on each)")
    return labelled


def evaluate(model: TaskModel, tok, data: TaskData, batch_size: int = 32,
             progress: str | None = None) -> tuple[dict[str, float], list[dict], Skips]:
    """(metrics, predictions, skips) of ``model`` on labelled ``data``; ``examples`` counts the scored ones."""
    labelled = require_labels(data)
    check_labels(model, data)
    predictions, skips = predict(model, tok, data, batch_size, progress)
    if data.task == "ner":
        pairs = [(ex.tags, p["tags"]) for ex, p in zip(data.examples, predictions) if ex.tags is not None]
        metrics = ner_metrics([g for g, _ in pairs], [p for _, p in pairs])
    elif data.task == "qa":
        refs = {ex.id: ex.references for ex in data.examples if ex.references}
        metrics = qa_metrics(refs, {p["id"]: p["answer"] for p in predictions})
    else:
        pairs = [(ex.label, p["label"]) for ex, p in zip(data.examples, predictions) if ex.label is not None]
        metrics = classification_metrics([g for g, _ in pairs], [p for _, p in pairs])
    metrics["examples"] = float(len(labelled))
    return metrics, predictions, skips


def mean_loss(model: TaskModel, features: list[dict], pad_id: int, batch_size: int = 32) -> float:
    """Mean loss over labelled features (used to check that training lowers it)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        was = model.training
        model.eval()
        # each feature gets its batch's mean loss: the mean over features is the size-weighted batch mean
        losses = _map_batches(features, batch_size, pad_id, device, None,
                              lambda chunk, batch: [float(model(batch)["loss"])] * len(chunk))
        model.train(was)
    return float(np.mean(losses)) if losses else 0.0
