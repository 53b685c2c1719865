import pytest

from bertforge.metrics import TASK_METRIC, classification_metrics, ner_metrics, qa_metrics, qa_scores


def test_classification_accuracy_and_macro_f1():
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "b"])
    assert m["accuracy"] == 0.5
    # a: P 1, R 1/2 -> 2/3; b: P 1/3, R 1 -> 1/2; c: never predicted -> 0.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0.0) / 3)
    assert set(TASK_METRIC) >= {"classify", "pair", "ner", "qa"}


def test_ner_entity_level_scores_bio_and_bmes():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC"]]
    m = ner_metrics(gold, pred)
    assert (m["precision"], m["recall"]) == (0.5, pytest.approx(1 / 3))
    assert m["f1_PER"] == 1.0 and m["f1_LOC"] == 0.0
    # BMES: a boundary error (E cut short) makes the entity wrong.
    gold = [["B-PER", "M-PER", "E-PER", "S-LOC"]]
    assert ner_metrics(gold, gold)["f1"] == 1.0
    assert ner_metrics(gold, [["B-PER", "E-PER", "O", "S-LOC"]])["f1"] == 0.5
    with pytest.raises(ValueError, match="sentence 0"):
        ner_metrics([["O"]], [["O", "O"]])


def test_qa_english_squad_rules():
    assert qa_scores("The Eiffel Tower", ["eiffel tower"]) == (1.0, 1.0)
    em, f1 = qa_scores("tower in Paris", ["Eiffel Tower", "the tower"])
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 3) * 1.0 / (4 / 3))  # best over references


def test_qa_chinese_cmrc_rules():
    # Punctuation and spaces do not count; F1 is over characters (longest common substring).
    assert qa_scores("北京， 中国", ["北京中国"]) == (1.0, 1.0)
    em, f1 = qa_scores("在北京", ["北京"])
    assert em == 0.0 and f1 == pytest.approx(2 * (2 / 3) * 1.0 / (5 / 3))
    em, f1 = qa_scores("1998年", ["1998年", "1998"])
    assert em == 1.0 and f1 == 1.0
    assert qa_scores("上海", ["北京"]) == (0.0, 0.0)


def test_qa_metrics_missing_prediction_scores_zero():
    refs = {"q1": ["北京"], "q2": ["上海"]}
    m = qa_metrics(refs, {"q1": "北京"})
    assert m == {"exact_match": 0.5, "f1": 0.5}
