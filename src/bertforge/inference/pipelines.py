"""Inference pipelines: text in, JSON-ready results out, in transformers' pipeline formats.

    from bertforge.inference.pipelines import pipeline
    ner = pipeline("token-classification", "runs/msra/best")
    ner("张三住在北京")   # [{"entity_group": "PER", "score": 0.98, "word": "张三", "start": 0, "end": 2}, ...]

A pipeline takes one input (-> one result) or a list (-> a list of results, in order); the server calls
``pipe(list_of_inputs, **options)``. Results, per input:

    fill-mask            [{"score", "token", "token_str", "sequence"}, ...] top_k candidates, best first;
                         consecutive masks are one word (write one mask per character of a Chinese word
                         for whole-word-masking models): "token" is then the list of ids; a text with
                         several separate masks gets one such list per mask
    feature-extraction   [float] * H: the mean of the token vectors ("mean") or the [CLS] vector ("cls")
    text-classification  [{"label", "score"}, ...] best first (top_k=None: every label); the input is a
                         text or {"text", "text_pair"}
    token-classification [{"entity_group", "score", "word", "start", "end"}, ...]: character offsets into
                         the original text (text[start:end] == word); long texts are tagged in pieces
    question-answering   {"answer", "score", "start", "end"} (top_k > 1: a list): offsets into the context

Task pipelines load a fine-tuned directory (finetune/store.py); fill-mask needs a checkpoint with a
masked-LM head, feature extraction any checkpoint. Empty texts and inputs of the wrong shape raise
BertforgeError naming the input.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BertforgeError
from ..finetune.encode import collate, encode_qa, encode_words, split_words, word_chunks
from ..finetune.store import is_task_directory, load_task_model
from ..taskdata import QAExample, Skips
from ..tasks import best_spans, decode_answers, entities

log = logging.getLogger("bertforge")
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff\uf900-\ufaff]) (?=[\u3400-\u9fff\uf900-\ufaff])")

TASKS = ("fill-mask", "feature-extraction", "text-classification", "token-classification", "question-answering")
# task.json task -> the pipeline that serves it
_FOR_TASK = {"classify": "text-classification", "pair": "text-classification", "ner": "token-classification",
             "qa": "question-answering"}


class InputError(BertforgeError):
    """One input of a pipeline call is unusable. ``index`` is its position in the list the caller passed, so a
    caller can name it in its own terms (predict: FILE:LINE); the message reads "input 3: <problem>"."""

    def __init__(self, index: int, problem: str):
        super().__init__(f"input {index}: {problem}")
        self.index, self.problem = index, problem


def _check_texts(texts: list, field: str = "text") -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(i, f"the {field} must be a string, got {type(t).__name__}")
        if not t.strip():
            raise InputError(i, f"the {field} is empty; nothing to run the model on")


def _warn_truncated(enc, max_length: int) -> None:
    """Warn when the tokenizer cut inputs at max_length: their results then describe only the beginning."""
    cut = sum(bool(e.overflowing) for e in enc.encodings)
    if cut:
        log.warning(f"{cut} of {len(enc.encodings)} inputs were longer than {max_length} tokens and were truncated")


def input_size(item: Any) -> int:
    """A cheap stand-in for an input's token count: its characters (QA / pair dicts: all their texts). Sorts
    pipeline inputs into batches and the server's queued items into forwards."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return sum(len(v) for v in item.values() if isinstance(v, str))
    return 0


class Pipeline:
    task: str

    def __init__(self, batch_size: int = 32):
        self.batch_size = batch_size

    def __call__(self, inputs: Any, **options) -> Any:
        single = not isinstance(inputs, list)
        items = [inputs] if single else inputs
        # Length bucketing: more inputs than one batch run in batches of similar lengths, each padded only to
        # its own longest, and the results go back to input order.
        order = list(range(len(items)))
        if len(items) > self.batch_size:
            order.sort(key=lambda i: input_size(items[i]))
        try:
            results = self._batches(items, order, options)
        except BertforgeError:
            if order == sorted(order):
                raise
            # a bad input: rerun in input order, so the error names the same input as without bucketing
            results = self._batches(items, list(range(len(items))), options)
        return results[0] if single else results

    def _batches(self, items: list, order: list[int], options: dict) -> list:
        results: list[Any] = [None] * len(items)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            try:
                batch = self._run([items[i] for i in index], **options)
            except InputError as exc:  # _run names positions in its batch; the caller knows positions in its list
                raise InputError(index[exc.index], exc.problem) from None
            for i, result in zip(index, batch):
                results[i] = result
        return results

    def _run(self, items: list, **options) -> list:
        raise NotImplementedError


class FillMask(Pipeline):
    task = "fill-mask"

    def __init__(self, model, tok, batch_size: int = 32):
        super().__init__(batch_size)
        self.model, self.tok = model.eval(), tok
        self.max_length = model.config.max_position_embeddings - model.config.position_offset

    @torch.no_grad()
    def _run(self, texts: list[str], top_k: int = 5) -> list:
        _check_texts(texts)
        tok, mask_id = self.tok, self.tok.mask_token_id
        enc = tok(texts, return_offsets_mapping=True)
        for i, ids in enumerate(enc["input_ids"]):
            if mask_id not in ids:
                raise InputError(i, f"the text has no {tok.mask_token}; put one where a word should be predicted")
            if len(ids) > self.max_length:
                raise InputError(i, f"the text has {len(ids)} tokens; this model reads at most {self.max_length}")
        features = [{"input_ids": ids, "token_type_ids": t} for ids, t in zip(enc["input_ids"], enc["token_type_ids"])]
        batch = collate(features, tok.pad_token_id)
        masked = batch["input_ids"] == mask_id  # [B, L]
        # the vocabulary projection and softmax only where a mask is: [M, V] rather than [B, L, V]
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mlm_positions=masked)
        logits = out["mlm_logits"]
        if logits.dim() == 3:  # a model that ignores mlm_positions (an ONNX export): [B, L, V]
            logits = logits[masked]
        probs = logits.float().softmax(-1)  # [M, V], masks in row-major order
        row = {pos: i for i, pos in enumerate(map(tuple, masked.nonzero().tolist()))}
        results = []
        for b, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            groups = _runs([i for i, t in enumerate(ids) if t == mask_id])
            per_group = [self._fill(texts[b], offsets, [probs[row[(b, p)]] for p in g], g, top_k) for g in groups]
            results.append(per_group[0] if len(per_group) == 1 else per_group)
        return results

    def _fill(self, text: str, offsets, probs: list[torch.Tensor], positions: list[int], top_k: int) -> list[dict]:
        """Top-k fillings of consecutive mask positions, scored by the product of their probabilities
        (the MLM predicts each position independently; a beam of width top_k over the positions).
        ``probs``: the vocabulary distribution at each of ``positions``."""
        beams: list[tuple[list[int], float]] = [([], 1.0)]
        specials = set(self.tok.all_special_ids)
        for pos, dist in zip(positions, probs):
            p = dist.clone()
            p[list(specials)] = 0.0
            top = torch.topk(p, min(top_k, p.numel()))  # --top-k above the vocabulary size: all of it
            beams = sorted(((ids + [t], s * q) for ids, s in beams for q, t in zip(top.values.tolist(), top.indices.tolist())),
                           key=lambda x: -x[1])[:top_k]
        start, end = offsets[positions[0]][0], offsets[positions[-1]][1]
        out = []
        for ids, score in beams:
            word = _CJK_GAP.sub("", self.tok.decode(ids)).strip()
            out.append({"score": score, "token": ids[0] if len(ids) == 1 else ids, "token_str": word,
                        "sequence": text[:start] + word + text[end:]})
        return out


def _runs(positions: list[int]) -> list[list[int]]:
    """[3, 4, 7] -> [[3, 4], [7]]: consecutive positions form one word."""
    groups: list[list[int]] = []
    for p in positions:
        if groups and groups[-1][-1] == p - 1:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


class FeatureExtraction(Pipeline):
    task = "feature-extraction"

    def __init__(self, encoder, tok, pooling: str = "mean", normalize: bool = False, batch_size: int = 32):
        super().__init__(batch_size)
        if pooling not in ("mean", "cls"):
            raise BertforgeError(f"pooling={pooling!r}: expected 'mean' or 'cls'")
        self.encoder, self.tok, self.pooling, self.normalize = encoder.eval(), tok, pooling, normalize
        self.max_length = encoder.config.max_position_embeddings - encoder.config.position_offset

    @torch.no_grad()
    def _run(self, texts: list[str]) -> list[list[float]]:
        from ..features import mean_pool

        _check_texts(texts)
        batch = self.tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        _warn_truncated(batch, self.max_length)
        hidden = self.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state
        hidden = hidden.float()  # a bf16 model: pool and return in float32
        vectors = mean_pool(hidden, batch["attention_mask"]) if self.pooling == "mean" else hidden[:, 0]
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.tolist()


class TextClassification(Pipeline):
    task = "text-classification"

    def __init__(self, model, tok, batch_size: int = 32):
        super().__init__(batch_size)
        self.model, self.tok = model.eval(), tok

    @torch.no_grad()
    def _run(self, items: list, top_k: int | None = None) -> list:
        texts, pairs = [], []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                if set(item) - {"text", "text_pair"} or "text" not in item:
                    raise InputError(i, f"expected a string or {{'text', 'text_pair'}}, got keys {sorted(item)}")
                texts.append(item["text"])
                pairs.append(item.get("text_pair"))
            else:
                texts.append(item)
                pairs.append(None)
        _check_texts(texts)
        if self.model.task.task == "pair" and any(p is None for p in pairs):
            raise BertforgeError("this model classifies text pairs: pass {'text': ..., 'text_pair': ...}")
        if any(p is not None for p in pairs):
            _check_texts(pairs, "text_pair")
        max_length = self.model.task.max_length
        enc = self.tok(texts, pairs if pairs[0] is not None else None, truncation=True, max_length=max_length)
        _warn_truncated(enc, max_length)
        features = [{"input_ids": a, "token_type_ids": b} for a, b in zip(enc["input_ids"], enc["token_type_ids"])]
        probs = self.model(collate(features, self.tok.pad_token_id))["logits"].float().softmax(-1)
        labels = self.model.task.labels
        results = []
        for row in probs.tolist():
            ranked = sorted(zip(labels, row), key=lambda x: -x[1])[: top_k or len(labels)]
            results.append([{"label": label, "score": score} for label, score in ranked])
        return results


class TokenClassification(Pipeline):
    task = "token-classification"

    def __init__(self, model, tok, batch_size: int = 32):
        super().__init__(batch_size)
        self.model, self.tok = model.eval(), tok

    @torch.no_grad()
    def _run(self, texts: list[str]) -> list[list[dict]]:
        _check_texts(texts)
        task = self.model.task
        features, spans = [], []
        for n, text in enumerate(texts):
            words = split_words(text)
            spans.append(words)
            tokens = [w for w, _ in words]
            for start, end in word_chunks(self.tok, tokens, task.max_length):
                w = encode_words(self.tok, tokens[start:end], task.max_length)
                features.append({"input_ids": w.input_ids, "token_type_ids": w.token_type_ids,
                                 "word_starts": w.word_starts, "first": w.first_token, "example": n})
        tags: list[list[str]] = [[] for _ in texts]
        scores: list[list[float]] = [[] for _ in texts]
        for i in range(0, len(features), self.batch_size):
            chunk = features[i:i + self.batch_size]
            batch = collate(chunk, self.tok.pad_token_id)
            logits = self.model(batch)["logits"]
            probs = logits.float().softmax(-1)
            for f, path, p in zip(chunk, self.model.decode(logits, batch["word_starts"]), probs):
                decoded = iter(path)
                for first in f["first"]:
                    tag = None if first is None else next(decoded)
                    tags[f["example"]].append("O" if tag is None else task.labels[tag])
                    scores[f["example"]].append(1.0 if tag is None else float(p[first, tag]))
        results = []
        for text, words, t, s in zip(texts, spans, tags, scores):
            found = []
            for label, first, last in entities(t):
                start, end = words[first][1], words[last][1] + len(words[last][0])
                found.append({"entity_group": label, "score": float(np.mean(s[first:last + 1])),
                              "word": text[start:end], "start": start, "end": end})
            results.append(found)
        return results


class QuestionAnswering(Pipeline):
    task = "question-answering"

    def __init__(self, model, tok, batch_size: int = 32):
        super().__init__(batch_size)
        self.model, self.tok = model.eval(), tok

    @torch.no_grad()
    def _run(self, items: list, top_k: int = 1) -> list:
        task = self.model.task
        examples = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                got = "plain text" if isinstance(item, str) else f"a {type(item).__name__}"
                raise InputError(i, f"expected {{'question': ..., 'context': ...}}, got {got}")
            missing, extra = {"question", "context"} - set(item), set(item) - {"question", "context"}
            if missing or extra:
                problem = f"no {' and no '.join(map(repr, sorted(missing)))}" if missing else f"unexpected keys {sorted(extra)}"
                raise InputError(i, f"expected {{'question': ..., 'context': ...}}; {problem}")
            for field in ("question", "context"):
                try:
                    _check_texts([item[field]], field)
                except InputError as exc:
                    raise InputError(i, exc.problem) from None
            examples.append(QAExample(str(i), item["question"], item["context"], source=f"input {i}"))
        skips = Skips()
        features = encode_qa(self.tok, examples, task, skips, train=False)
        # a long context is read in overlapping windows (nothing lost); a long question is cut: say so, as
        # classification does when it truncates
        cut = sum(n for reason, n in skips.counts.items() if "truncated" in reason)
        if cut:
            log.warning(f"{cut} of {len(examples)} questions were longer than {task.max_question_length} tokens "
                        "and were truncated")
        windows: list[list] = [[] for _ in examples]
        for i in range(0, len(features), self.batch_size):
            chunk = features[i:i + self.batch_size]
            out = self.model(collate(chunk, self.tok.pad_token_id))
            starts, ends = (out[k].float().cpu().numpy() for k in ("start_logits", "end_logits"))
            for f, s, e in zip(chunk, starts, ends):
                n = len(f["input_ids"])
                windows[f["example"]].append(best_spans(s[:n], e[:n], f["offsets"], task.n_best, task.max_answer_length))
        results = []
        for ex, spans in zip(examples, windows):
            answers = decode_answers(spans, ex.context, top_k) or [{"answer": "", "score": 0.0, "start": 0, "end": 0}]
            results.append(answers[0] if top_k == 1 else answers)
        return results


def pipeline(task: str | None, model: str | Path, *, base: str | Path | None = None, pooling: str = "mean",
             normalize: bool = False, batch_size: int = 32, precision: str = "fp32",
             compile: bool = False) -> Pipeline:
    """A pipeline for ``task`` over a local model directory. task None: the fine-tuned directory's own
    task. ``base``: the base model of an adapter directory, when it moved. ``precision``: "fp32", "bf16"
    (bf16 weights and activations: AMX on CPUs that have it) or "int8" (dynamic quantization of every
    nn.Linear); see inference/fast.py. ``compile``: torch.compile the encoder for every input shape up
    front (bf16: ~1.25x faster at batch 32 x 128; costs a minute or so at load)."""
    from ..data.tokenizers import AutoTokenizer
    from .fast import prepare

    if task is not None and task not in TASKS:
        raise BertforgeError(f"unknown pipeline task {task!r}; valid tasks: {', '.join(TASKS)}")
    model = Path(model)
    if is_task_directory(model):
        task_model, tok = load_task_model(model, base)
        task_model = prepare(task_model, precision, inplace=True, compile=compile)
        own = _FOR_TASK.get(task_model.task.task)
        if task == "feature-extraction":
            return FeatureExtraction(task_model.encoder, tok, pooling, normalize, batch_size)
        if task not in (None, own):
            raise BertforgeError(f"{model} was fine-tuned for {task_model.task.task!r} ({own}), not {task}")
        cls = {"text-classification": TextClassification, "token-classification": TokenClassification,
               "question-answering": QuestionAnswering}[own]
        return cls(task_model, tok, batch_size)
    tok = AutoTokenizer.from_pretrained(model)
    if task == "fill-mask":
        from ..auto import AutoModelForMaskedLM

        mlm = AutoModelForMaskedLM.from_pretrained(model)
        if mlm.mlm is None:
            raise BertforgeError(f"{model} has no masked-LM head; fill-mask needs a checkpoint saved with one")
        return FillMask(prepare(mlm, precision, inplace=True, compile=compile), tok, batch_size)
    if task == "feature-extraction":
        from ..auto import AutoModel

        encoder = prepare(AutoModel.from_pretrained(model), precision, inplace=True, compile=compile)
        return FeatureExtraction(encoder, tok, pooling, normalize, batch_size)
    raise BertforgeError(f"{model} is not a fine-tuned directory (no task.json); {task or 'its task'} needs one "
                         "(bertforge finetune writes it)")
