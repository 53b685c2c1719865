import json

import pytest

from bertforge.errors import BertforgeError
from bertforge.taskdata import load, read_conll, read_squad, read_table


def test_tables_csv_tsv_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"good, fun",pos\n"",neg\nawful,neg\n')
    d = read_table(tmp_path / "a.csv")
    assert [(e.text, e.label) for e in d.examples] == [("good, fun", "pos"), ("awful", "neg")]
    assert d.labels() == ["neg", "pos"]
    assert "1 rows with an empty text skipped" in d.skips.lines()[0] and "a.csv:3" in d.skips.lines()[0]
    (tmp_path / "b.tsv").write_text("sentence1\tsentence2\tlabel\nA\tB\tentailment\nC\tD\t-\n")
    d = read_table(tmp_path / "b.tsv", "pair")
    assert [(e.text, e.text_b, e.label) for e in d.examples] == [("A", "B", "entailment")]
    assert "no annotator agreement" in d.skips.lines()[0]
    (tmp_path / "c.jsonl").write_text('{"text": "x", "label": 1}\n\n{"text": "y"}\n')
    d = read_table(tmp_path / "c.jsonl")
    assert [(e.text, e.label) for e in d.examples] == [("x", "1"), ("y", None)]


def test_table_errors_name_the_row(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n{"text": \n')
    with pytest.raises(BertforgeError, match=r"bad.jsonl:2: invalid JSON"):
        read_table(tmp_path / "bad.jsonl")
    (tmp_path / "nocol.csv").write_text("sentence_x,label\nhi,pos\n")
    with pytest.raises(BertforgeError, match=r"nocol.csv:2: no text column"):
        read_table(tmp_path / "nocol.csv")
    (tmp_path / "fields.csv").write_text("text,label\nhi,pos,extra\n")
    with pytest.raises(BertforgeError, match=r"fields.csv:2: expected 2 fields"):
        read_table(tmp_path / "fields.csv")
    (tmp_path / "single.csv").write_text("text,label\nhi,pos\n")
    with pytest.raises(BertforgeError, match="needs a second text"):
        read_table(tmp_path / "single.csv", "pair")


def test_conll_sentences_and_malformed_line(tmp_path):
    (tmp_path / "a.conll").write_text("-DOCSTART- -X- O\n\nJohn NNP B-PER\nlives VBZ O\n\n\nParis NNP B-LOC\n")
    d = read_conll(tmp_path / "a.conll")
    assert [e.tokens for e in d.examples] == [["John", "lives"], ["Paris"]]
    assert d.examples[1].tags == ["B-LOC"] and d.examples[1].source.endswith("a.conll:7")
    (tmp_path / "b.conll").write_text("John B-PER\nlives O\n\nParis NNP B-LOC\n")
    with pytest.raises(BertforgeError, match=r"b.conll:4: expected 2 columns .* found 3"):
        read_conll(tmp_path / "b.conll")
    (tmp_path / "c.conll").write_text("John B-PER\nlives OUT\n")
    with pytest.raises(BertforgeError, match=r"c.conll:2: tag 'OUT'"):
        read_conll(tmp_path / "c.conll")


def test_squad_answer_mismatch_counted_skipped_reported(tmp_path):
    doc = {"data": [{"paragraphs": [{"context": "北京是中国的首都。", "qas": [
        {"id": "q1", "question": "首都?", "answers": [{"text": "北京", "answer_start": 0}]},
        {"id": "q2", "question": "哪?", "answers": [{"text": "中国", "answer_start": 0}, {"text": "中国", "answer_start": 3}]},
        {"id": "q3", "question": "谁?", "answers": [{"text": "上海", "answer_start": 1}]},
        {"id": "q4", "question": " ", "answers": []},
    ]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(doc, ensure_ascii=False))
    d = read_squad(tmp_path / "s.json")
    by_id = {e.id: e for e in d.examples}
    assert by_id["q1"].answers == [("北京", 0)]
    assert by_id["q2"].answers == [("中国", 3)] and by_id["q2"].references == ["中国", "中国"]
    assert by_id["q3"].answers == [] and by_id["q3"].references == ["上海"]
    assert "q4" not in by_id
    lines = d.skips.lines()
    assert any(line.startswith("2 answers whose text does not match") and "id q2" in line for line in lines)
    assert any("empty question" in line for line in lines)
    (tmp_path / "t.json").write_text('{"version": 1}')
    with pytest.raises(BertforgeError, match="'data' list"):
        read_squad(tmp_path / "t.json")


def test_load_resolves_paths_and_names(tmp_path):
    with pytest.raises(BertforgeError, match="not a named dataset"):
        load(str(tmp_path / "missing.csv"), "classify")
    with pytest.raises(BertforgeError, match="unknown split"):
        load("rotten-tomatoes:dev", "classify")
    with pytest.raises(BertforgeError, match="is a 'classify' dataset"):
        load("rotten-tomatoes", "ner")


def test_rotten_tomatoes_fixed_split():
    train = load("rotten-tomatoes", "classify", "train")
    test = load("rotten-tomatoes:test", "classify", limit=50)
    assert train.labels() == ["fresh", "rotten"] and len(test.examples) == 50
    assert not {e.text for e in train.examples} & {e.text for e in load("rotten-tomatoes:test", "classify").examples}
    assert load("rotten-tomatoes", "classify", "train", limit=3).examples[0].text == train.examples[0].text


def test_chinese_sentiment_dedup_and_conflicts():
    splits = [load(f"chinese-sentiment:{s}", "classify").examples for s in ("train", "validation", "test")]
    texts = [e.text for split in splits for e in split]
    assert len(texts) == len(set(texts))  # deduplicated, texts in both files dropped, disjoint splits
    assert 15_000 < len(texts) < 17_500


@pytest.mark.slow
def test_msra_ner_bmes():
    d = load("msra-ner:test", "ner")
    assert len(d.examples) == 5000
    assert {"B-PER", "M-PER", "E-PER", "S-LOC", "O"} <= set(d.labels())


def test_shared_ocnli_and_cmrc(shared_data):
    nli = load(str(shared_data / "ocnli" / "dev.json"), "pair")
    assert nli.labels() == ["contradiction", "entailment", "neutral"]
    assert nli.skips.counts and all(e.label != "-" for e in nli.examples)
    qa = load(str(shared_data / "cmrc2018" / "cmrc2018_trial.json"), "qa")
    assert len(qa.examples) > 900 and all(ex.references for ex in qa.examples)
