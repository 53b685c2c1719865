"""Fine-tuning task heads on the bertforge encoder, and the decoding that turns their logits into answers.

- ``SequenceClassifier`` (tasks "classify" and "pair"): [CLS]/pooler or mean pooling -> dropout -> linear.
- ``TokenClassifier`` ("ner"): a linear tag scorer per token, read at the first sub-token of each word,
  optionally a linear-chain ``CRF`` over the words with Viterbi decoding constrained to valid BIO /
  BIOES / BMES transitions.
- ``QuestionAnswering`` ("qa"): start and end logits per token (Devlin et al., 2019, sec. 4.2);
  ``decode_answers`` merges the n-best spans of every document-stride window of a context.
- ``MultipleChoice`` ("choice"): one score per (context, choice) sequence, softmax over the choices.

Every model takes a batch dict and returns a dict of logits plus ``loss`` when the batch has labels;
``TaskObjective`` wraps one as an objective for the training loop (``objective(batch) -> (loss,
metrics)``). Module names follow transformers' ``BertFor...`` heads (``classifier``, ``qa_outputs``) so
exporting is a rename of the encoder only. Batch keys and shapes (B batch, L length, C choices, W words,
T tags):

    input_ids, attention_mask, token_type_ids   [B, L] ([B, C, L] for "choice")
    labels            [B] class ids; "ner": [B, L] tag ids at word starts, -100 elsewhere
    word_starts       [B, L] bool, "ner": True at the first sub-token of each word
    start_positions, end_positions   [B], "qa": token indices of the answer (0 = [CLS]: not in this window)
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import BertforgeError
from .files import write_json
from .features import ScalarMix, freeze_encoder, mean_pool
from .modeling import Dropout, Encoder

Task = Literal["classify", "pair", "ner", "qa", "choice"]
IGNORE = -100


@dataclass(frozen=True)
class TaskConfig:
    """What a fine-tuned model is, beside its encoder config; saved as task.json next to the weights."""

    # classify: one text; pair: two texts; ner: tags per word; qa: extractive span; choice: multiple choice.
    task: Task
    # Class names (classify, pair) or the tag set (ner), in id order; empty for qa and choice.
    labels: tuple[str, ...] = ()
    # Sentence vector: "cls" = the pooler output ([CLS] when the model has no pooler), "mean" = mean of tokens.
    pooling: Literal["cls", "mean"] = "cls"
    # Feed the head an ELMo scalar mix of all hidden layers instead of the last one.
    layer_mix: bool = False
    # NER: a CRF over the word tags, decoded with constrained Viterbi.
    crf: bool = False
    # Frozen-encoder feature mode: only the head (and the scalar mix) train.
    frozen: bool = False
    # Tokens per sequence, special tokens included; longer texts are truncated (NER: split, QA: strided).
    max_length: int = 128
    # QA: tokens of overlap between consecutive context windows.
    doc_stride: int = 32
    # QA: question tokens kept (longer questions are truncated).
    max_question_length: int = 32
    # QA: longest answer span in tokens.
    max_answer_length: int = 30
    # QA: candidate spans considered per question.
    n_best: int = 20

    def __post_init__(self) -> None:
        from .train.config import check_literals

        check_literals(self)
        if self.task in ("classify", "pair") and len(self.labels) < 2:
            raise BertforgeError(f"task {self.task!r} needs at least 2 labels, got {list(self.labels)}")
        if self.task == "ner" and not self.labels:
            raise BertforgeError("task 'ner' needs a tag set")
        if self.crf and self.task != "ner":
            raise BertforgeError("crf=True only applies to task 'ner'")
        # 3 = [CLS] q [SEP] c [SEP]; a template with more specials is checked again when encoding.
        if self.task == "qa" and self.doc_stride >= self.max_length - self.max_question_length - 3:
            raise BertforgeError(
                f"doc_stride={self.doc_stride} leaves no new context per window with max_length={self.max_length} "
                f"and max_question_length={self.max_question_length}"
            )

    def save(self, path: str | Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "TaskConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BertforgeError(f"{path}: cannot read task config ({exc})") from exc
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise BertforgeError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}")
        return cls(**{**data, "labels": tuple(data.get("labels", ()))})


# ---- tag schemes -----------------------------------------------------------------------------------
def tag_scheme(labels: list[str] | tuple[str, ...]) -> str:
    """"BMES" if any tag starts M-, "BIOES" if any starts E- or S-, else "BIO"."""
    prefixes = {t[0] for t in labels if t != "O"}
    return "BMES" if "M" in prefixes else "BIOES" if prefixes & {"E", "S"} else "BIO"


def full_tag_set(labels: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Every tag of the labels' scheme for every entity type they mention, "O" first: training data in
    which S-ORG happens not to occur still yields a model that can tag S-ORG."""
    prefixes = {"BIO": "BI", "BIOES": "BIES", "BMES": "BMES"}[tag_scheme(labels)]
    types = sorted({t[2:] for t in labels if t != "O"})
    return ("O",) + tuple(f"{p}-{t}" for t in types for p in prefixes)


def _split(tag: str) -> tuple[str, str]:
    """"B-PER" -> ("B", "PER"); BMES's M is BIOES's I."""
    if tag == "O":
        return "O", ""
    prefix = "I" if tag[0] == "M" else tag[0]
    return prefix, tag[2:]


def allowed_transitions(labels: list[str] | tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which tag may follow which, and which may start / end a sentence, under the labels' scheme.

    BIO: I-X only after B-X or I-X (never first). BIOES/BMES: after B-X or I-X (M-X) only I-X or E-X;
    after O, E-* or S-* only O, B-* or S-*; a sentence starts with O/B/S and ends with O/E/S.
    -> (allowed [T, T] bool, [from, to]; start [T] bool; end [T] bool).
    """
    scheme = tag_scheme(labels)
    parts = [_split(t) for t in labels]
    n = len(labels)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i, (p, x) in enumerate(parts):
        for j, (q, y) in enumerate(parts):
            if scheme == "BIO":
                ok = q != "I" or (p in ("B", "I") and x == y)
            elif p in ("B", "I"):
                ok = q in ("I", "E") and x == y
            else:
                ok = q in ("O", "B", "S")
            allowed[i, j] = ok
    start = torch.tensor([p in ("O", "B", "S") for p, _ in parts])
    end = torch.tensor([scheme == "BIO" or p in ("O", "E", "S") for p, _ in parts])
    return allowed, start, end


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in a tag sequence of any of the three schemes
    (seqeval's chunking; BMES's M- read as I-)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return get_entities(["I-" + t[2:] if t.startswith("M-") else t for t in tags])


# ---- CRF ---------------------------------------------------------------------------------------------
class CRF(nn.Module):
    # inference/fast.prepare keeps this module in float32 under bf16: Viterbi sums transition scores along
    # the sentence, where bf16's 8-bit mantissa would change paths.
    keep_fp32 = True
    """Linear-chain CRF over word tags (Lafferty et al., 2001; as on BERT in the Chinese NER literature).

    Written here rather than imported: pytorch-crf, the usual PyPI choice, has had no release since 2019
    and has no transition constraints; the forward algorithm and Viterbi are a few lines each.
    Training maximises the unconstrained likelihood (so a noisy gold sequence costs a finite loss, as in
    AllenNLP); decoding forbids the transitions that ``allowed_transitions`` rules out, so the output
    never holds an I- after O.
    """

    def __init__(self, labels: list[str] | tuple[str, ...]):
        super().__init__()
        t = len(labels)
        self.transitions = nn.Parameter(torch.zeros(t, t))  # [from, to]
        self.start = nn.Parameter(torch.zeros(t))
        self.end = nn.Parameter(torch.zeros(t))
        allowed, start, end = allowed_transitions(labels)
        self.register_buffer("allowed", allowed, persistent=False)
        self.register_buffer("start_allowed", start, persistent=False)
        self.register_buffer("end_allowed", end, persistent=False)

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(tags | emissions) per sequence. emissions [B, W, T], tags [B, W], mask [B, W] bool,
        left-aligned with mask[:, 0] all True -> [B]."""
        emissions = emissions.float()
        b, w, _ = emissions.shape
        rows = torch.arange(b, device=tags.device)
        m = mask.float()
        # Score of the gold path: start + sum of emissions + sum of transitions + end.
        emit = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1)  # [B, W]
        gold = self.start[tags[:, 0]] + (emit * m).sum(1)
        if w > 1:
            gold = gold + (self.transitions[tags[:, :-1], tags[:, 1:]] * m[:, 1:]).sum(1)
        last = tags[rows, mask.sum(1) - 1]
        gold = gold + self.end[last]
        # log Z by the forward algorithm: alpha_t(j) = logsumexp_i(alpha_{t-1}(i) + A_ij) + e_t(j).
        alpha = self.start + emissions[:, 0]  # [B, T]
        for t in range(1, w):
            step = torch.logsumexp(alpha.unsqueeze(2) + self.transitions, dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t, None], step, alpha)
        log_z = torch.logsumexp(alpha + self.end, dim=1)
        return gold - log_z

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Constrained Viterbi: the best valid tag path of each sequence. [B, W, T], [B, W] -> B lists."""
        neg = float("-inf")
        trans = self.transitions.masked_fill(~self.allowed, neg)
        score = self.start.masked_fill(~self.start_allowed, neg) + emissions[:, 0].float()  # [B, T]
        history = []
        for t in range(1, emissions.shape[1]):
            best, index = (score.unsqueeze(2) + trans).max(dim=1)  # over the previous tag: [B, T]
            history.append(index)
            score = torch.where(mask[:, t, None], best + emissions[:, t].float(), score)
        score = score + self.end.masked_fill(~self.end_allowed, neg)
        paths = []
        for i, length in enumerate(mask.sum(1).tolist()):
            tag = int(score[i].argmax())
            path = [tag]
            for t in range(length - 1, 0, -1):
                tag = int(history[t - 1][i, tag])
                path.append(tag)
            paths.append(path[::-1] if length else [])
        return paths


def pack(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the positions where ``keep`` is True to the left, in order: x [B, L, ...], keep [B, L] bool
    -> (packed [B, W, ...], mask [B, W] bool) with W the largest count in the batch (at least 1)."""
    counts = keep.sum(1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]  # kept positions first
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    mask = torch.arange(width, device=keep.device) < counts.unsqueeze(1)
    return x.gather(1, index), mask


# ---- models ------------------------------------------------------------------------------------------
class TaskModel(nn.Module):
    """An encoder, an optional scalar mix over its layers, and a task head (built by the subclass)."""

    def __init__(self, encoder: Encoder, task: TaskConfig):
        super().__init__()
        self.encoder = encoder
        self.task = task
        self.dropout = Dropout(encoder.config.hidden_dropout)
        self.mix = ScalarMix(encoder.config.num_layers + 1) if task.layer_mix else None
        if task.frozen:
            freeze_encoder(encoder)

    def _init_head(self) -> None:
        for name, module in self.named_children():
            if name not in ("encoder", "mix"):
                module.apply(self.encoder._init_weights)

    def head_modules(self) -> nn.ModuleDict:
        """Everything the task adds to the encoder (classifier, CRF, scalar mix), as one module."""
        return nn.ModuleDict({name: m for name, m in self.named_children() if name != "encoder"})

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if self.task.frozen:
            self.encoder.eval()  # a fixed feature extractor: no dropout
        return self

    def sequence(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token vectors [B, L, H] (last layer, or the scalar mix) and the pooler output [B, H] or None."""
        with torch.no_grad() if self.task.frozen else nullcontext():
            out = self.encoder(
                batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                output_hidden_states=self.mix is not None,
            )
        if self.mix is None:
            return out.last_hidden_state, out.pooler_output
        hidden = self.mix(out.hidden_states)
        pooler = self.encoder.pooler
        return hidden, torch.tanh(pooler(hidden[:, 0])) if pooler is not None else None

    def sentence(self, batch: dict) -> torch.Tensor:
        """One vector per sequence [B, H]: the pooler output (or [CLS]) or the mean of the tokens."""
        hidden, pooled = self.sequence(batch)
        if self.task.pooling == "mean":
            return mean_pool(hidden, batch.get("attention_mask"))
        return pooled if pooled is not None else hidden[:, 0]


class SequenceClassifier(TaskModel):
    """transformers' BertForSequenceClassification: pooled vector -> dropout -> linear (H -> classes)."""

    def __init__(self, encoder: Encoder, task: TaskConfig):
        super().__init__(encoder, task)
        self.classifier = nn.Linear(encoder.config.hidden_size, len(task.labels))
        self._init_head()

    def forward(self, batch: dict) -> dict:
        logits = self.classifier(self.dropout(self.sentence(batch)))  # [B, classes]
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = F.cross_entropy(logits.float(), batch["labels"])
        return out


class TokenClassifier(TaskModel):
    """transformers' BertForTokenClassification (token vectors -> dropout -> linear H -> tags), read at the
    first sub-token of each word, plus an optional CRF over the words."""

    def __init__(self, encoder: Encoder, task: TaskConfig):
        super().__init__(encoder, task)
        self.classifier = nn.Linear(encoder.config.hidden_size, len(task.labels))
        self._init_head()
        self.crf = CRF(task.labels) if task.crf else None

    def forward(self, batch: dict) -> dict:
        hidden, _ = self.sequence(batch)
        logits = self.classifier(self.dropout(hidden))  # [B, L, T]
        out = {"logits": logits}
        if "labels" in batch:
            labels = batch["labels"]
            if self.crf is None:
                out["loss"] = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
            else:
                emissions, mask = pack(logits, labels != IGNORE)  # [B, W, T]
                tags, _ = pack(labels.clamp(min=0), labels != IGNORE)
                rows = mask[:, 0]  # sequences with at least one word
                nll = -self.crf.log_likelihood(emissions[rows], tags[rows], mask[rows])
                out["loss"] = nll.sum() / mask.sum().clamp(min=1)  # per word, comparable to the softmax loss
        return out

    @torch.no_grad()
    def decode(self, logits: torch.Tensor, word_starts: torch.Tensor) -> list[list[int]]:
        """Tag ids per word: logits [B, L, T], word_starts [B, L] bool -> B lists (one id per word)."""
        emissions, mask = pack(logits, word_starts)
        if self.crf is not None:
            return self.crf.decode(emissions, mask)
        best = emissions.argmax(-1)
        return [row[:n].tolist() for row, n in zip(best, mask.sum(1).tolist())]


class QuestionAnswering(TaskModel):
    """transformers' BertForQuestionAnswering: token vectors -> linear (H -> 2) -> start and end logits."""

    def __init__(self, encoder: Encoder, task: TaskConfig):
        super().__init__(encoder, task)
        self.qa_outputs = nn.Linear(encoder.config.hidden_size, 2)
        self._init_head()

    def forward(self, batch: dict) -> dict:
        hidden, _ = self.sequence(batch)
        start, end = self.qa_outputs(hidden).float().unbind(-1)  # 2 x [B, L]
        out = {"start_logits": start, "end_logits": end}
        if "start_positions" in batch:
            out["loss"] = (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2
        return out


class MultipleChoice(TaskModel):
    """transformers' BertForMultipleChoice: each (context, choice) sequence -> pooled -> linear (H -> 1)."""

    def __init__(self, encoder: Encoder, task: TaskConfig):
        super().__init__(encoder, task)
        self.classifier = nn.Linear(encoder.config.hidden_size, 1)
        self._init_head()

    def forward(self, batch: dict) -> dict:
        b, c, n = batch["input_ids"].shape
        flat = {k: batch[k].reshape(b * c, n) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        logits = self.classifier(self.dropout(self.sentence(flat))).view(b, c)  # [B, C]
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = F.cross_entropy(logits.float(), batch["labels"])
        return out


MODELS: dict[str, type[TaskModel]] = {
    "classify": SequenceClassifier,
    "pair": SequenceClassifier,
    "ner": TokenClassifier,
    "qa": QuestionAnswering,
    "choice": MultipleChoice,
}


def build_task_model(encoder: Encoder, task: TaskConfig) -> TaskModel:
    return MODELS[task.task](encoder, task)


class TaskObjective(nn.Module):
    """A task model as a training-loop objective: ``objective(batch) -> (loss, metrics)``."""

    def __init__(self, model: TaskModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model(batch)
        metrics = {}
        if "logits" in out and "labels" in batch and batch["labels"].dim() == 1:
            metrics["accuracy"] = float((out["logits"].argmax(-1) == batch["labels"]).float().mean())
        return out["loss"], metrics


# ---- extractive QA decoding ------------------------------------------------------------------------
@dataclass
class Span:
    score: float  # start logit + end logit
    start: int  # character offsets into the context, end exclusive
    end: int


def best_spans(
    start_logits: np.ndarray,  # [L]
    end_logits: np.ndarray,  # [L]
    offsets: list[tuple[int, int] | None],  # per token: (char start, char end) in the context, None outside it
    n_best: int,
    max_answer_length: int,
) -> list[Span]:
    """The ``n_best`` highest-scoring spans of one window: start <= end, both inside the context, at most
    ``max_answer_length`` tokens. Exhaustive over the L x L band (cheap at L <= 512), not top-k pruned."""
    inside = np.array([o is not None for o in offsets])
    if not inside.any():
        return []
    n = len(offsets)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    valid = (j >= i) & (j - i < max_answer_length) & inside[:, None] & inside[None, :]
    scores = np.where(valid, start_logits[:n, None] + end_logits[None, :n], -np.inf)
    flat = np.flatnonzero(valid)
    top = flat[np.argsort(-scores.ravel()[flat], kind="stable")[:n_best]]
    return [Span(float(scores.ravel()[k]), offsets[k // n][0], offsets[k % n][1]) for k in top]


def decode_answers(windows: list[list[Span]], context: str, n_best: int) -> list[dict]:
    """Merge the candidate spans of every window of one context: the same character span found in two
    overlapping windows keeps its best score (spans are trimmed of surrounding whitespace). ``score`` is a
    softmax over all the merged candidates (each window's TaskConfig.n_best), so it does not depend on how
    many answers are asked for: a top-1 answer scored 1.0 whatever the model thought when the softmax was
    over the returned ones only. -> up to n_best dicts {answer, score, start, end}, best first."""
    best: dict[tuple[int, int], float] = {}
    for spans in windows:
        for span in spans:
            # Byte-level BPE offsets include the space before a word: answers never start or end with one.
            s, e = span.start, span.end
            while s < e and context[s].isspace():
                s += 1
            while e > s and context[e - 1].isspace():
                e -= 1
            if e > s and span.score > best.get((s, e), -np.inf):
                best[(s, e)] = span.score
    if not best:
        return []
    ranked = sorted(best.items(), key=lambda kv: -kv[1])
    logits = np.array([score for _, score in ranked])
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return [
        {"answer": context[s:e], "score": float(p), "start": s, "end": e}
        for ((s, e), _), p in zip(ranked[:n_best], probs[:n_best])
    ]
