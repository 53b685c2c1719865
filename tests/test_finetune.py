"""Fine-tuning end to end on tiny models and data: encoding, bad input, the CLI, transformers export."""

import csv
import json

import pytest
import torch

from bertforge.cli import main
from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.finetune.encode import check_tokenizer, encode_qa, encode_texts, encode_tokens, pair_template
from bertforge.finetune.store import save_task_model, transformers_logits
from bertforge.modeling import Encoder
from bertforge.taskdata import QAExample, Skips, TextExample, TokenExample
from bertforge.tasks import IGNORE, TaskConfig, build_task_model
from taskkit import model_dir, tiny_config, tokenizer

POS = ["good movie", "great fun film", "very good", "fun movie", "great film"]
NEG = ["bad movie", "awful film", "very boring", "not good", "boring bad film"]


def test_ner_labels_on_first_sub_token_and_long_sentences_split(tmp_path):
    tok = tokenizer(tmp_path)
    ex = TokenExample(["john", "plays", "in", "paris"], ["B-PER", "O", "O", "B-LOC"], "s:1")
    ids = {"O": 0, "B-PER": 1, "B-LOC": 2}
    (f,) = encode_tokens(tok, [ex], ids, 32, Skips())
    assert tok.convert_ids_to_tokens(f["input_ids"]) == ["[CLS]", "john", "play", "##s", "in", "paris", "[SEP]"]
    assert f["labels"] == [IGNORE, 1, 0, IGNORE, 0, 2, IGNORE]
    assert f["word_starts"] == [False, True, True, False, True, True, False]
    skips = Skips()
    pieces = encode_tokens(tok, [ex], ids, 5, skips)  # 3 word tokens + 2 specials per piece
    assert [p["first_token"] for p in pieces] == [[1, 2], [1, 2]] and "split into pieces" in skips.lines()[0]
    with pytest.raises(BertforgeError, match=r"s:1: tag 'B-LOC' \(word 4\) never appears in the training data"):
        encode_tokens(tok, [ex], {"O": 0, "B-PER": 1}, 32, Skips())


def test_classification_truncation_counted_and_unseen_label_named(tmp_path):
    tok = tokenizer(tmp_path)
    skips = Skips()
    rows = [TextExample("good movie " * 20, None, "pos", "a.csv:2"), TextExample("bad", None, "neg", "a.csv:3")]
    features = encode_texts(tok, rows, {"neg": 0, "pos": 1}, 16, skips)
    assert len(features[0]["input_ids"]) == 16 and features[1]["labels"] == 0
    assert skips.counts == {"texts longer than 16 tokens truncated": 1} and "a.csv:2" in skips.lines()[0]
    with pytest.raises(BertforgeError, match=r"a.csv:3: label 'neg' never appears in the training data"):
        encode_texts(tok, rows, {"pos": 0}, 16, Skips())


def test_qa_windows_label_the_answer_only_where_it_is_whole(tmp_path):
    tok = tokenizer(tmp_path)
    context = "我爱上海。张三住在北京。北京是中国的首都。"
    start = context.index("北京是")
    task = TaskConfig("qa", max_length=14, doc_stride=3, max_question_length=4)
    skips = Skips()
    features = encode_qa(tok, [QAExample("q", "首都", context, answers=[("北京是中国", start)])], task, skips, True)
    tpl = pair_template(tok)
    assert tpl.prefix == [tok.cls_token_id] and tpl.middle == [tok.sep_token_id] == tpl.suffix
    assert len(features) > 2 and "split into overlapping windows" in skips.lines()[0]
    inside = [f for f in features if f["start_positions"]]
    assert inside, "some window holds the whole answer"
    for f in features:
        assert len(f["input_ids"]) <= 14
        if f["start_positions"]:
            s, e = f["offsets"][f["start_positions"]][0], f["offsets"][f["end_positions"]][1]
            assert context[s:e] == "北京是中国"
        else:
            assert f["end_positions"] == 0
    # Consecutive windows overlap by doc_stride context tokens.
    ctx = [[o for o in f["offsets"] if o is not None] for f in features]
    assert ctx[0][-3:] == ctx[1][:3]


def test_tokenizer_that_does_not_match_the_model_is_refused(tmp_path):
    tok = tokenizer(tmp_path)
    with pytest.raises(BertforgeError, match="tokenizer has 90 tokens but the model's embedding has 50 rows"):
        check_tokenizer(tok, tiny_config().replace(vocab_size=50), "x")
    with pytest.raises(BertforgeError, match="pad id is 0 but the model was built with pad_token_id=1"):
        check_tokenizer(tok, tiny_config().replace(pad_token_id=1), "x")


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


@pytest.mark.slow
def test_cli_finetune_evaluate_predict_classification(tmp_path, capsys):
    md = model_dir(tmp_path)
    rows = [(t, "pos") for t in POS] + [(t, "neg") for t in NEG]
    _write_csv(tmp_path / "train.csv", rows * 4 + [("", "pos")])
    _write_csv(tmp_path / "dev.csv", rows)
    out = tmp_path / "run"
    code = main(["finetune", "--task", "classify", "--model", str(md), "--train", str(tmp_path / "train.csv"),
                 "--eval", str(tmp_path / "dev.csv"), "--out", str(out), "--epochs", "6", "--batch-size", "8",
                 "--lr", "1e-2", "--quiet", "--patience", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 rows with an empty text skipped" in captured.err and "train.csv:42" in captured.err
    summary = json.loads((out / "finetune.json").read_text())
    accuracies = [e["accuracy"] for e in summary["evaluations"]]
    assert summary["best"] == max(accuracies) >= 0.9 and summary["steps"] == 30
    loss = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert loss[-1] < loss[0]
    assert json.loads((out / "best" / "eval.json").read_text())["accuracy"] == summary["best"]
    # 30 steps: fewer than finetune.run.AUTO_GROUP_MIN_STEPS, so plain random batches by default
    assert json.loads((out / "config.json").read_text())["batches"] == {
        "group_by_length": False, "chosen": "auto: 30 steps, grouped from 100"}

    assert main(["evaluate", "--model", str(out / "best"), "--data", str(tmp_path / "dev.csv")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["accuracy"] == summary["best"] and "macro_f1" in metrics

    (tmp_path / "in.txt").write_text("good movie\n\nawful film\n")
    assert main(["predict", "--model", str(out / "best"), "--input", str(tmp_path / "in.txt")]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert lines[0][0]["label"] == "pos" and lines[2][0]["label"] == "neg"
    assert lines[1] == {"error": f"{tmp_path / 'in.txt'}:2: the text is empty; nothing to run the model on", "line": 2}
    assert "1 of 3 inputs could not be used" in captured.err

    # The best model loads in transformers' AutoModelForSequenceClassification with the same logits.
    from bertforge.finetune.store import load_task_model

    model, tok = load_task_model(out / "best")
    batch = dict(tok(POS + NEG, padding=True, return_tensors="pt"))
    theirs = transformers_logits(out / "best", batch)["logits"]
    assert torch.allclose(model(batch)["logits"], theirs, atol=1e-5)


@pytest.mark.slow
def test_cli_finetune_ner_with_crf_and_adapters(tmp_path, capsys):
    md = model_dir(tmp_path)
    sents = [("张 三 住 在 北 京", "B-PER I-PER O O B-LOC I-LOC"), ("john lives in paris", "B-PER O O B-LOC"),
             ("我 爱 上 海", "O O B-LOC I-LOC"), ("mary works at london", "B-PER O O B-LOC")]
    conll = "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(s.split(), tags.split())) for s, tags in sents)
    (tmp_path / "train.conll").write_text((conll + "\n\n") * 4)
    (tmp_path / "dev.conll").write_text(conll + "\n")
    base = {name: p.clone() for name, p in __import__("bertforge").AutoModel.from_pretrained(md).state_dict().items()}
    code = main(["finetune", "--task", "ner", "--model", str(md), "--train", str(tmp_path / "train.conll"),
                 "--eval", str(tmp_path / "dev.conll"), "--out", str(tmp_path / "run"), "--crf", "--adapter", "8",
                 "--epochs", "15", "--batch-size", "4", "--lr", "1e-2", "--quiet", "--patience", "0"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert summary["trainable_parameters"] < 0.2 * summary["parameters"]
    assert summary["best"] > 0.5 and "adapter" in summary["saved"]["best"]
    assert sorted(p.name for p in (tmp_path / "run" / "best").iterdir() if p.suffix == ".safetensors") == ["adapter.safetensors"]
    after = __import__("bertforge").AutoModel.from_pretrained(md).state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)  # the base directory was never touched
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "run" / "best"), "张三住在北京"]) == 0
    entities = json.loads(capsys.readouterr().out)
    assert all("张三住在北京"[e["start"]:e["end"]] == e["word"] for e in entities)


def test_cli_bad_inputs_give_one_line_errors(tmp_path, capsys):
    md = model_dir(tmp_path)
    (tmp_path / "bad.conll").write_text("john B-PER\nlives O\nparis NNP B-LOC\n")
    code = main(["finetune", "--task", "ner", "--model", str(md), "--train", str(tmp_path / "bad.conll"),
                 "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2 and "bad.conll:3: expected 2 columns" in capsys.readouterr().err
    _write_csv(tmp_path / "train.csv", [("good", "pos"), ("bad", "neg")])
    _write_csv(tmp_path / "dev.csv", [("good", "pos"), ("meh", "neutral")])
    code = main(["finetune", "--task", "classify", "--model", str(md), "--train", str(tmp_path / "train.csv"),
                 "--eval", str(tmp_path / "dev.csv"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "dev.csv:3: label 'neutral' never appears in the training data" in err
    assert main(["evaluate", "--model", str(md), "--data", str(tmp_path / "dev.csv")]) == 2
    assert "not a fine-tuned model directory" in capsys.readouterr().err


def test_cli_predict_and_evaluate_refuse_bad_inputs_in_one_line(tmp_path, capsys):
    md = model_dir(tmp_path)
    rows = [(t, "pos") for t in POS] + [(t, "neg") for t in NEG]
    _write_csv(tmp_path / "train.csv", rows)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classify", "--model", str(md), "--train", str(tmp_path / "train.csv"),
                 "--out", str(out), "--epochs", "1", "--quiet"]) == 0
    model = str(out / "final")
    capsys.readouterr()

    def refused(argv, code=2):
        with pytest.raises(SystemExit) as exit_:  # argparse refuses the value itself
            main(argv)
        assert exit_.value.code == code
        return capsys.readouterr().err

    assert "--batch-size: expected a whole number >= 1, got 0" in refused(["predict", "--model", model, "--batch-size", "0", "hi"])
    assert "--top-k: expected a whole number >= 1, got -1" in refused(["predict", "--model", model, "--top-k", "-1", "hi"])
    assert "--port: expected a port from 0 to 65535, got 70000" in refused(["serve", model, "--port", "70000"])
    (tmp_path / "latin1.txt").write_bytes("good\ncaf\xe9 good\n".encode("latin-1"))
    assert main(["predict", "--model", model, "--input", str(tmp_path / "latin1.txt")]) == 2
    assert "latin1.txt:2: not UTF-8 (byte 0xe9)" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert main(["predict", "--model", model, "--input", str(tmp_path / "empty.txt")]) == 2
    assert "empty.txt: the file is empty" in capsys.readouterr().err
    assert main(["predict", "--model", model, "--output", str(tmp_path / "nodir" / "out.jsonl"), "hi"]) == 2
    assert f"{tmp_path / 'nodir' / 'out.jsonl'}: cannot write, the directory" in capsys.readouterr().err
    (tmp_path / "typo.csv").write_text("text,labels\ngood movie,pos\n")  # no label column: nothing to score
    assert main(["evaluate", "--model", model, "--data", str(tmp_path / "typo.csv")]) == 2
    assert "no labelled examples to score among 1 read" in capsys.readouterr().err
    assert main(["finetune", "--task", "classify", "--model", str(md), "--train", str(tmp_path / "train.csv"),
                 "--eval", str(tmp_path / "typo.csv"), "--out", str(tmp_path / "run2"), "--quiet"]) == 2
    assert "typo.csv" in capsys.readouterr().err and not (tmp_path / "run2" / "metrics.jsonl").exists()


def test_hf_export_per_task_or_the_reason_it_cannot(tmp_path):
    tok = tokenizer(tmp_path)
    batch = dict(tok(["john lives in paris", "张三住在北京"], padding=True, return_tensors="pt"))
    for task, extra in [("ner", {}), ("qa", {}), ("classify", {"pooling": "mean"}), ("ner", {"crf": True})]:
        labels = ("O", "B-PER") if task == "ner" else ("a", "b") if task == "classify" else ()
        model = build_task_model(Encoder(tiny_config()), TaskConfig(task, labels=labels, **extra)).eval()
        d = tmp_path / f"{task}{len(extra)}"
        kind = save_task_model(model, tok, d)
        if extra:
            assert kind.startswith("bertforge (") and (d / "head.safetensors").is_file()
            continue
        assert kind == "transformers"
        theirs = transformers_logits(d, batch)
        ours = model(batch)
        for key, value in theirs.items():
            assert torch.allclose(ours[key], value, atol=1e-5), key
    electra = build_task_model(Encoder(PRESETS["test-tiny"].replace(model_type="electra", add_pooler=False)),
                               TaskConfig("classify", labels=("a", "b")))
    assert "electra sequence-classification head" in save_task_model(electra, tok, tmp_path / "e")


def test_layerwise_adamw_scales_each_group_and_restores_the_lr():
    from bertforge.finetune.run import LayerwiseAdamW

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    opt = LayerwiseAdamW([{"params": [a], "lr_scale": 1.0}, {"params": [b], "lr_scale": 0.25}], lr=0.1, weight_decay=0.0)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    assert torch.allclose(b, 0.25 * a) and a[0].item() == pytest.approx(-0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]


def test_early_stopping_ends_the_run_after_patience_evaluations(tmp_path):
    from bertforge.finetune.run import EpochStream, FinetuneTrainer, RowsObjective
    from bertforge.train import TrainConfig

    tok = tokenizer(tmp_path)
    model = build_task_model(Encoder(tiny_config()), TaskConfig("classify", labels=("neg", "pos")))
    rows = [TextExample(t, None, "pos", f"r{i}") for i, t in enumerate(POS)]
    features = encode_texts(tok, rows, {"neg": 0, "pos": 1}, 16, Skips())
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])
    saved = []
    trainer = FinetuneTrainer(
        RowsObjective(model), EpochStream(features, [r.source for r in rows], 2, 0, 0), None,
        TrainConfig(max_steps=100, eval_every=2, save_every_steps=0, log_every=1), tmp_path / "run",
        task_eval=lambda: {"accuracy": next(scores)}, metric="accuracy", patience=2,
        on_best=saved.append, progress_bar=False,
    )
    result = trainer.train()
    assert trainer.early_stopped and result.step == 8 and trainer.best == 0.7 and trainer.best_step == 4
    assert [r["step"] for r in saved] == [2, 4]


def test_a_failing_batch_names_its_rows(tmp_path):
    from bertforge.finetune.run import RowsObjective

    model = build_task_model(Encoder(tiny_config()), TaskConfig("classify", labels=("neg", "pos")))
    batch = {"input_ids": torch.tensor([[2, 500, 3]]), "labels": torch.tensor([0]), "rows": ["train.csv:7"]}
    with pytest.raises(IndexError) as info:
        RowsObjective(model)(batch)
    assert any("train.csv:7" in note for note in getattr(info.value, "__notes__", ["train.csv:7"]))


def test_ner_scores_only_the_sentences_with_tags(tmp_path):
    """A sentence without gold tags (built through the API) is predicted but not scored, as unlabelled rows of
    the other tasks are; it used to reach seqeval as None."""
    from bertforge.finetune.evaluate import evaluate
    from bertforge.taskdata import TaskData

    tok = tokenizer(tmp_path)
    model = build_task_model(Encoder(tiny_config()), TaskConfig("ner", labels=("O", "B-PER"))).eval()
    tagged = TokenExample(["john", "lives"], ["B-PER", "O"], "dev:1")
    data = TaskData("ner", [tagged, TokenExample(["mary", "works"], None, "dev:4")], "dev")
    metrics, predictions, _ = evaluate(model, tok, data)
    alone, _, _ = evaluate(model, tok, TaskData("ner", [tagged], "dev"))
    assert len(predictions) == 2 and metrics == alone and metrics["examples"] == 1.0
