"""Task metrics: accuracy and macro-F1, entity-level NER scores (seqeval), extractive-QA EM and F1.

Every function takes plain Python lists/dicts (gold first, prediction second) and returns a flat
``dict[str, float]`` whose values are fractions in [0, 1], so the training loop can log them and
early stopping can read one key. ``TASK_METRIC`` names the key model selection uses per task.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

# The number early stopping and "best model" selection maximise, per task.
TASK_METRIC = {"classify": "accuracy", "pair": "accuracy", "ner": "f1", "qa": "f1", "choice": "accuracy"}


def classification_metrics(gold: Sequence, pred: Sequence) -> dict[str, float]:
    """Accuracy and macro-F1 (unweighted mean of per-label F1 over every label seen in gold or pred)."""
    from sklearn.metrics import f1_score  # scikit-learn comes with seqeval

    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    accuracy = sum(g == p for g, p in zip(gold, pred)) / len(gold)
    macro = f1_score([str(g) for g in gold], [str(p) for p in pred], average="macro", zero_division=0)
    return {"accuracy": float(accuracy), "macro_f1": float(macro)}


def _to_iobes(tags: Sequence[str]) -> list[str]:
    """seqeval reads B/I/E/S/O prefixes; BMES writes 'inside' as M, so rename M- to I-."""
    return ["I-" + t[2:] if t.startswith("M-") else t for t in tags]


def ner_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 with seqeval (conlleval rules: an entity counts only if
    its type and both boundaries match), plus ``f1_<TYPE>`` per entity type. Tags may be BIO, BIOES or
    BMES; sentences pair up one to one and must have equal lengths."""
    from seqeval.metrics import classification_report

    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
    g = [_to_iobes(s) for s in gold]
    p = [_to_iobes(s) for s in pred]
    report = classification_report(g, p, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    out = {"precision": float(micro["precision"]), "recall": float(micro["recall"]), "f1": float(micro["f1-score"])}
    for name, row in report.items():
        if not name.endswith(" avg"):
            out[f"f1_{name}"] = float(row["f1-score"])
    return out


# ---- extractive QA ---------------------------------------------------------------------------------
# The official CMRC 2018 script's punctuation list; we also drop anything Unicode classes as
# punctuation, and whitespace, which the official script drops implicitly via its tokenizer.
_CMRC_PUNCT = set("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』") | {"……"}
_CJK = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff]")


def _is_punct(ch: str) -> bool:
    return ch in _CMRC_PUNCT or unicodedata.category(ch).startswith("P")


def _squash(text: str) -> str:
    return "".join(c for c in text.lower() if not (_is_punct(c) or c.isspace()))


def _cmrc_segments(text: str) -> list[str]:
    """CMRC 2018 'mixed segmentation': each CJK character is a segment; runs of other characters split
    into words. (The official script uses nltk.word_tokenize for those runs; a regex split on spaces
    and punctuation gives the same words for the alphanumerics CMRC answers contain.)"""
    segments: list[str] = []
    run: list[str] = []
    for ch in text.lower().strip():
        if _CJK.match(ch) or ch.isspace() or _is_punct(ch):
            if run:
                segments.append("".join(run))
                run = []
            if _CJK.match(ch):
                segments.append(ch)
        else:
            run.append(ch)
    if run:
        segments.append("".join(run))
    return segments


def _longest_common_substring(a: list[str], b: list[str]) -> int:
    """Length of the longest common contiguous run (the CMRC script's find_lcs), O(len(a) len(b))."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def _squad_normalize(text: str) -> str:
    """SQuAD v1.1 official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def qa_scores(prediction: str, references: Sequence[str], lang: str | None = None) -> tuple[float, float]:
    """(EM, F1) of one predicted answer, each the max over reference answers.

    lang "zh" (the default when a reference contains CJK characters): CMRC 2018 rules: EM after removing
    punctuation and spaces; F1 from the longest common substring of the mixed segmentation
    (characters for Chinese, words otherwise). lang "en": SQuAD v1.1 rules (normalised token overlap).
    """
    if not references:
        raise ValueError("a QA example needs at least one reference answer")
    if lang is None:
        lang = "zh" if any(_CJK.search(r) for r in references) else "en"
    em = f1 = 0.0
    for ref in references:
        if lang == "zh":
            em = max(em, float(_squash(ref) == _squash(prediction)))
            r, p = _cmrc_segments(ref), _cmrc_segments(prediction)
            common = _longest_common_substring(r, p)
        else:
            em = max(em, float(_squad_normalize(ref) == _squad_normalize(prediction)))
            r, p = _squad_normalize(ref).split(), _squad_normalize(prediction).split()
            common = sum((Counter(r) & Counter(p)).values())
        if common:
            precision, recall = common / len(p), common / len(r)
            f1 = max(f1, 2 * precision * recall / (precision + recall))
    return em, f1


def qa_metrics(
    references: dict[str, Sequence[str]], predictions: dict[str, str], lang: str | None = None
) -> dict[str, float]:
    """Mean EM and F1 over the questions in ``references`` (id -> reference answers); a question without
    a prediction scores 0, as in the official scripts."""
    if not references:
        return {"exact_match": 0.0, "f1": 0.0}
    em_sum = f1_sum = 0.0
    for qid, refs in references.items():
        em, f1 = qa_scores(predictions.get(qid, ""), refs, lang)
        em_sum += em
        f1_sum += f1
    n = len(references)
    return {"exact_match": em_sum / n, "f1": f1_sum / n}
