"""Pipelines on tiny models: output formats, entity and answer offsets into the original text."""

import pytest
import torch

from bertforge.errors import BertforgeError
from bertforge.finetune.encode import collate, encode_qa, encode_tokens
from bertforge.finetune.store import save_task_model
from bertforge.heads import PretrainingModel
from bertforge.inference.pipelines import pipeline
from bertforge.modeling import Encoder
from bertforge.taskdata import QAExample, Skips, TokenExample
from bertforge.tasks import TaskConfig, build_task_model
from taskkit import tiny_config, tokenizer

TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def _fit(model, batch, steps=80, lr=5e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ner")
    tok = tokenizer(tmp)
    torch.manual_seed(0)
    model = build_task_model(Encoder(tiny_config()), TaskConfig("ner", labels=TAGS, crf=True, max_length=16))
    sents = [
        (list("张三住在北京"), ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]),
        ("john lives in paris".split(), ["B-PER", "O", "O", "B-LOC"]),
        (list("我爱上海"), ["O", "O", "B-LOC", "I-LOC"]),
        ("mary works at london".split(), ["B-PER", "O", "O", "B-LOC"]),
    ]
    examples = [TokenExample(w, t, f"s{i}") for i, (w, t) in enumerate(sents)]
    features = encode_tokens(tok, examples, {t: i for i, t in enumerate(TAGS)}, 16, Skips())
    _fit(model, collate(features, tok.pad_token_id))
    save_task_model(model, tok, tmp / "ner")
    return tmp / "ner"


def test_token_classification_offsets_map_back_to_the_original_text(ner_dir):
    ner = pipeline(None, ner_dir)
    text = "  张三住在北京。 john  lives in paris!"
    entities = ner(text)
    assert [(e["entity_group"], e["word"]) for e in entities] == [("PER", "张三"), ("LOC", "北京"), ("PER", "john"), ("LOC", "paris")]
    for e in entities:
        assert text[e["start"]:e["end"]] == e["word"] and 0 < e["score"] <= 1
    # A text longer than max_length (16 tokens) is tagged in pieces, the offsets still into the whole.
    long_text = "我爱上海。" * 6 + "张三住在北京"
    found = ner([long_text])[0]
    assert [e["word"] for e in found][-2:] == ["张三", "北京"]
    assert all(long_text[e["start"]:e["end"]] == e["word"] for e in found)
    with pytest.raises(BertforgeError, match="input 1: the text is empty"):
        ner(["张三", "  "])


def test_question_answering_answer_offsets_in_the_context(tmp_path):
    tok = tokenizer(tmp_path)
    torch.manual_seed(0)
    task = TaskConfig("qa", max_length=24, doc_stride=4, max_question_length=6, max_answer_length=4)
    model = build_task_model(Encoder(tiny_config()), task)
    context = "我爱上海。张三住在北京。北京是中国的首都。"
    ex = [QAExample("1", "张三住在哪里", context, answers=[("北京", 9)]),
          QAExample("2", "中国的首都", context, answers=[("北京", 12)])]
    features = encode_qa(tok, ex, task, Skips(), train=True)
    assert len(features) > 2  # the context is split into overlapping windows
    batch = {k: v for k, v in collate(features, tok.pad_token_id).items() if k != "example"}
    _fit(model, batch, steps=120)
    save_task_model(model, tok, tmp_path / "qa")
    qa = pipeline("question-answering", tmp_path / "qa")
    result = qa({"question": "张三住在哪里", "context": context})
    assert set(result) == {"answer", "score", "start", "end"}
    assert result["answer"] == "北京" and context[result["start"]:result["end"]] == "北京"
    top = qa([{"question": "张三住在哪里", "context": context}], top_k=3)[0]
    assert len(top) == 3 and top[0]["score"] >= top[1]["score"]
    with pytest.raises(BertforgeError, match="expected"):
        qa(["no dict"])


def test_question_answering_warns_when_it_truncates_a_question(tmp_path, caplog):
    task = TaskConfig("qa", max_length=24, doc_stride=4, max_question_length=6, max_answer_length=4)
    save_task_model(build_task_model(Encoder(tiny_config()), task), tokenizer(tmp_path), tmp_path / "qa")
    qa = pipeline("question-answering", tmp_path / "qa")
    context = "我爱上海。张三住在北京。北京是中国的首都。" * 3  # longer than a window: read in windows, not cut
    with caplog.at_level("WARNING", logger="bertforge"):
        qa([{"question": "张三住在哪里", "context": context}])
    assert "truncated" not in caplog.text
    with caplog.at_level("WARNING", logger="bertforge"):
        qa([{"question": "张三住在哪里", "context": context}, {"question": "张三住在哪里中国的首都", "context": context}])
    assert "1 of 2 questions were longer than 6 tokens and were truncated" in caplog.text


def test_text_classification_and_feature_extraction(tmp_path):
    tok = tokenizer(tmp_path)
    torch.manual_seed(0)
    model = build_task_model(Encoder(tiny_config()), TaskConfig("classify", labels=("neg", "pos")))
    save_task_model(model, tok, tmp_path / "cls")
    clf = pipeline(None, tmp_path / "cls")
    out = clf(["good movie", "bad film"], top_k=None)
    assert [len(r) for r in out] == [2, 2] and {d["label"] for d in out[0]} == {"neg", "pos"}
    assert sum(d["score"] for d in out[0]) == pytest.approx(1.0) and out[0][0]["score"] >= out[0][1]["score"]
    assert len(clf("good movie", top_k=1)) == 1
    with pytest.raises(BertforgeError, match="fine-tuned for 'classify'"):
        pipeline("question-answering", tmp_path / "cls")
    emb = pipeline("feature-extraction", tmp_path / "cls", pooling="cls")
    vectors = emb(["good movie", "bad"])
    assert len(vectors) == 2 and len(vectors[0]) == tiny_config().hidden_size


def test_fill_mask_whole_words_and_single_tokens(tmp_path):
    tok = tokenizer(tmp_path)
    torch.manual_seed(0)
    mlm = PretrainingModel(tiny_config(), heads=("mlm",))
    mlm.encoder.save_pretrained(tmp_path / "m")  # an encoder alone has no MLM head
    with pytest.raises(BertforgeError, match="no masked-LM head"):
        tok.save_pretrained(tmp_path / "m")
        pipeline("fill-mask", tmp_path / "m")
    from bertforge.convert.checkpoint import save_pretrained

    save_pretrained(mlm, tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    fill = pipeline("fill-mask", tmp_path / "mlm")
    text = "北京是[MASK][MASK]的首都"
    cands = fill(text, top_k=3)
    assert len(cands) == 3 and cands[0]["score"] >= cands[1]["score"]
    assert len(cands[0]["token_str"]) == 2 and isinstance(cands[0]["token"], list)
    assert cands[0]["sequence"] == "北京是" + cands[0]["token_str"] + "的首都"
    two = fill("[MASK] lives in [MASK]", top_k=2)
    assert len(two) == 2 and all(len(c) == 2 for c in two) and isinstance(two[0][0]["token"], int)
    with pytest.raises(BertforgeError, match="has no \\[MASK\\]"):
        fill("no mask here")


def test_predict_command_writes_one_line_per_input_and_names_bad_lines(tmp_path, capsys):
    import json

    from bertforge.cli import main

    tok = tokenizer(tmp_path)
    model = build_task_model(Encoder(tiny_config()), TaskConfig("pair", labels=("no", "yes")))
    save_task_model(model, tok, tmp_path / "pair")
    (tmp_path / "in.jsonl").write_text('{"text": "good", "text_pair": "fun"}\n{"text": \n"just text"\n')
    code = main(["predict", "--model", str(tmp_path / "pair"), "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--top-k", "1"])
    assert code == 0
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and len(lines[0]) == 1 and lines[0][0]["label"] in ("no", "yes")
    assert lines[1]["line"] == 2 and "invalid JSON" in lines[1]["error"]
    assert lines[2]["line"] == 3 and "text pairs" in lines[2]["error"]
    assert "2 of 3 inputs could not be used" in capsys.readouterr().err
    assert not list(tmp_path.glob(".out.jsonl.tmp"))


def test_length_bucketing_keeps_input_order_and_results(ner_dir):
    """More inputs than a batch: sorted by length into batches, answered in input order, the same results
    as running each input alone; a bad input is still named by its position."""
    ner = pipeline(None, ner_dir, batch_size=2)
    texts = ["张三住在北京。" * 3, "我爱上海", "john lives in paris", "张三", "mary works at london。我爱上海"]
    together = ner(texts)
    alone = [ner(t) for t in texts]
    strip = lambda r: [(e["entity_group"], e["start"], e["end"]) for e in r]  # noqa: E731
    assert [strip(r) for r in together] == [strip(r) for r in alone]
    for got, want in zip(together, alone):
        assert [e["score"] for e in got] == pytest.approx([e["score"] for e in want], abs=1e-5)
    with pytest.raises(BertforgeError, match="input 1: the text is empty"):
        ner(["张三住在北京", "", "我爱上海"])
    # in a later batch too: the position in the caller's list, not in the batch
    with pytest.raises(BertforgeError, match="input 3: the text is empty"):
        ner(["张三住在北京", "我爱上海", "张三", " ", "北京"])


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_pipelines_agree_with_fp32(ner_dir, tmp_path, precision):
    """--precision bf16/int8 through the pipeline API: same output formats, close to fp32 (the CRF stays fp32)."""
    fp32, low = pipeline(None, ner_dir), pipeline(None, ner_dir, precision=precision)
    if precision == "bf16":
        assert low.model.crf.transitions.dtype == torch.float32
        assert next(low.model.encoder.parameters()).dtype == torch.bfloat16
    text = "张三住在北京。 john lives in paris"
    want, got = fp32(text), low(text)
    assert [e["word"] for e in got] == [e["word"] for e in want]
    emb32 = torch.tensor(pipeline("feature-extraction", ner_dir)(["张三住在北京", "我爱上海"]))
    emb = torch.tensor(pipeline("feature-extraction", ner_dir, precision=precision)(["张三住在北京", "我爱上海"]))
    assert emb.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(emb32, emb, dim=-1).min() > 0.98


@pytest.mark.slow
def test_compiled_pipeline_equals_eager(ner_dir):
    """pipeline(compile=True): the task model's encoder is compiled for every shape up front; entities and
    embeddings equal the eager pipeline's (fp32 within 1e-5) across input lengths and batch sizes."""
    eager, fast = pipeline(None, ner_dir), pipeline(None, ner_dir, compile=True)
    assert type(fast.model.encoder).__name__ == "OptimizedModule" and fast.model.crf is not None
    texts = ["张三住在北京。 john lives in paris", "我爱上海", "mary works at london and 张三住在北京"]
    assert fast(texts) == eager(texts) and fast(texts[0]) == eager(texts[0])
    fe, fe_fast = pipeline("feature-extraction", ner_dir), pipeline("feature-extraction", ner_dir, compile=True)
    torch.testing.assert_close(torch.tensor(fe_fast(texts)), torch.tensor(fe(texts)), atol=1e-5, rtol=1e-5)


def test_predict_names_the_file_line_and_what_is_wrong_with_a_qa_input(tmp_path, capsys):
    import json

    from bertforge.cli import main

    tok = tokenizer(tmp_path)
    task = TaskConfig("qa", max_length=24, doc_stride=4, max_question_length=6, max_answer_length=4)
    save_task_model(build_task_model(Encoder(tiny_config()), task), tok, tmp_path / "qa")
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "张三住在哪里", "context": "张三住在北京"}\n{"question": "", "context": "张三住在北京"}\n'
                    '{"question": "张三"}\n张三住在哪里\n{"question": 3, "context": "北京"}\n', encoding="utf-8")
    assert main(["predict", "--model", str(tmp_path / "qa"), "--input", str(path)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert "answer" in lines[0]
    assert [x["error"] for x in lines[1:]] == [
        f"{path}:2: the question is empty; nothing to run the model on",
        f"{path}:3: expected {{'question': ..., 'context': ...}}; no 'context'",
        f"{path}:4: expected {{'question': ..., 'context': ...}}, got plain text",
        f"{path}:5: the question must be a string, got int",
    ]
    assert main(["predict", "--model", str(tmp_path / "qa"), '{"question": "谁", "context": " "}']) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "argument 1: the context is empty; nothing to run the model on"


def test_feature_extraction_warns_when_it_truncates_as_classification_does(tmp_path, caplog):
    from taskkit import model_dir

    long_text = "北京 上海 " * 20  # 40 words: past the 16 positions of this encoder
    md = model_dir(tmp_path, max_position_embeddings=16)
    emb = pipeline("feature-extraction", md)
    with caplog.at_level("WARNING", logger="bertforge"):
        emb(["北京", long_text])
    assert "1 of 2 inputs were longer than 16 tokens and were truncated" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bertforge"):
        emb(["北京", "上海"])
    assert "truncated" not in caplog.text
    torch.manual_seed(0)
    model = build_task_model(Encoder(tiny_config()), TaskConfig("classify", labels=("neg", "pos"), max_length=16))
    save_task_model(model, tokenizer(tmp_path), tmp_path / "cls")
    with caplog.at_level("WARNING", logger="bertforge"):
        pipeline(None, tmp_path / "cls")(["北京", long_text])
    assert "1 of 2 inputs were longer than 16 tokens and were truncated" in caplog.text
