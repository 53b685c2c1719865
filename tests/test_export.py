"""ONNX export: every position type and head matches PyTorch within 1e-4 at new shapes; int8 stays close."""

import json

import onnx
import pytest
import torch

from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.export import OnnxRuntimeModel, export_onnx, quantize_onnx, quantize_torch, verify_onnx
from bertforge.heads import PretrainingModel
from bertforge.modeling import Encoder, EncoderOutput
from bertforge.tasks import TaskConfig, build_task_model

TINY = PRESETS["test-tiny"]


def ids(b=3, n=11, seed=0):
    return torch.randint(5, 100, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        TINY.replace(position_type="relative"),
        TINY.replace(position_type="rotary", add_pooler=False),  # needs export's repeat_interleave fix
        TINY.replace(embedding_size=16, sharing="all"),
        TINY.replace(type_vocab_size=0, add_pooler=False),  # no segment input at all (DistilBERT)
        TINY.replace(pad_token_id=1, position_offset=2, max_position_embeddings=80),  # RoBERTa positions
    ],
    ids=["bert", "nezha", "roformer", "albert", "distilbert", "roberta"],
)
def test_encoder_onnx_matches_pytorch_at_dynamic_shapes(tmp_path, config):
    torch.manual_seed(0)
    model = Encoder(config)  # left in train mode on purpose: export and verify must use eval
    path = export_onnx(model, tmp_path / "model.onnx")
    assert model.training
    assert verify_onnx(model, path, atol=1e-4) < 1e-4
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    out = OnnxRuntimeModel(path)(ids())
    assert isinstance(out, EncoderOutput) and out.last_hidden_state.shape == (3, 11, 32)
    assert (out.pooler_output is None) == (not config.add_pooler)


@pytest.mark.parametrize(
    "task",
    [
        TaskConfig("classify", labels=("neg", "pos"), pooling="mean"),
        TaskConfig("ner", labels=("O", "B-PER", "I-PER"), crf=True),
        TaskConfig("qa", max_length=256),
    ],
    ids=lambda t: t.task,
)
def test_task_and_pretraining_heads_export(tmp_path, task):
    torch.manual_seed(0)
    model = build_task_model(Encoder(TINY), task)
    path = export_onnx(model, tmp_path / "task.onnx")
    assert verify_onnx(model, path) < 1e-4
    # The batch-dict calling convention of the task models works on the ONNX model too.
    batch = {"input_ids": ids(), "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    got, expected = OnnxRuntimeModel(path)(batch), model.eval()(batch)
    assert got.keys() == expected.keys()


def test_pretraining_model_nested_outputs(tmp_path):
    model = PretrainingModel(TINY, heads=("mlm", "pair"))
    path = export_onnx(model, tmp_path / "pt.onnx")
    assert verify_onnx(model, path) < 1e-4
    out = OnnxRuntimeModel(path)(ids())
    assert isinstance(out["encoder"], EncoderOutput)
    assert out["mlm_logits"].shape == (3, 11, 100) and out["pair_logits"].shape == (3, 2)


@pytest.mark.slow
def test_int8_onnx_and_torch_stay_close_to_fp32(tmp_path):
    torch.manual_seed(0)
    model = Encoder(PRESETS["bert-tiny"].replace(vocab_size=200)).eval()  # wide enough for int8 to matter
    fp32 = export_onnx(model, tmp_path / "model.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "model.int8.onnx")
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    x = ids(4, 16, seed=3)
    with torch.no_grad():
        ref = model(x).last_hidden_state
        torch_int8 = quantize_torch(model)(x).last_hidden_state
    onnx_int8 = OnnxRuntimeModel(int8)(x).last_hidden_state
    for approx in (onnx_int8, torch_int8):
        cos = torch.nn.functional.cosine_similarity(approx.flatten(0, 1), ref.flatten(0, 1), dim=-1)
        assert cos.min() > 0.98, cos.min()
    assert not isinstance(model.attentions[0].qkv, torch.ao.nn.quantized.dynamic.Linear)  # the original is untouched


def test_verify_catches_a_mismatch(tmp_path):
    model = Encoder(TINY)
    path = export_onnx(model, tmp_path / "model.onnx")
    with torch.no_grad():
        model.pooler.bias.add_(1.0)
    with pytest.raises(BertforgeError, match="pooler_output.*differs from PyTorch"):
        verify_onnx(model, path)


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BertforgeError, match="not a loadable ONNX model"):
        OnnxRuntimeModel(bad)
    with pytest.raises(BertforgeError, match="no such ONNX file"):
        OnnxRuntimeModel(tmp_path / "missing.onnx")


@pytest.mark.slow
def test_export_command_writes_verified_fp32_and_int8(tmp_path, capsys):
    from bertforge.cli import main

    torch.manual_seed(0)
    source = tmp_path / "model"
    PretrainingModel(PRESETS["bert-tiny"].replace(vocab_size=200), heads=("mlm",)).save_pretrained(source)
    (source / "vocab.txt").write_text("[PAD]\n")  # stands in for the tokenizer files that travel along
    out = tmp_path / "exported"
    assert main(["export", str(source), "-o", str(out), "--quantize", "int8"]) == 0
    assert (out / "vocab.txt").exists() and (out / "config.json").exists()
    report = json.loads((out / "export.json").read_text())
    assert report["model.onnx"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert report["model.int8.onnx"]["mean_cosine_vs_fp32"] > 0.98
    assert "logits" in OnnxRuntimeModel(out / "model.onnx").output_names[-1]
    assert "max |ONNX - PyTorch|" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing"), "-o", str(out)]) == 2
    # a model that fails the check is not left under the final name; an asked-for head must exist
    failed = tmp_path / "failed" / "a"
    assert main(["export", str(source), "-o", str(failed), "--atol", "-1"]) == 2
    err = capsys.readouterr().err
    assert f"{failed / 'model.onnx'}: " in err and not (tmp_path / "failed").exists()  # the directories it made too
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert main(["export", str(source), "-o", str(tmp_path / "kept"), "--atol", "-1"]) == 2
    assert (tmp_path / "kept" / "notes.txt").read_text() == "mine"  # a directory that was there stays
    assert not [p.name for p in (tmp_path / "kept").iterdir() if p.suffix == ".onnx"]
    capsys.readouterr()
    encoder_only = tmp_path / "encoder"
    PretrainingModel(PRESETS["bert-tiny"].replace(vocab_size=200), heads=()).save_pretrained(encoder_only)
    assert main(["export", str(encoder_only), "-o", str(tmp_path / "e"), "--head", "mlm"]) == 2
    assert "--head mlm: " in capsys.readouterr().err
    assert main(["export", str(source), "-o", str(source)]) == 2
    assert "is the model directory itself" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_model_stands_in_for_a_task_model_in_its_pipeline(tmp_path):
    """``like=``: the NER pipeline (tokenize, forward, CRF decode, offsets) runs unchanged on ONNX Runtime."""
    from bertforge.data.tokenizer_train import train_tokenizer
    from bertforge.inference.pipelines import TokenClassification

    text = "Ada Lovelace lived in London . She wrote programs for Babbage ."
    (tmp_path / "corpus.txt").write_text((text + "\n") * 10)
    tok = train_tokenizer("wordpiece", [tmp_path / "corpus.txt"], 120, progress=False)
    torch.manual_seed(0)
    model = build_task_model(Encoder(TINY.replace(vocab_size=tok.vocab_size)),
                             TaskConfig("ner", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"), crf=True)).eval()
    path = export_onnx(model, tmp_path / "ner.onnx")
    onnx_model = OnnxRuntimeModel(path, like=model)
    assert onnx_model.task is model.task
    texts = [text, "Babbage lived in London"]
    got, expected = TokenClassification(onnx_model, tok)(texts), TokenClassification(model, tok)(texts)
    strip = lambda results: [[{k: v for k, v in e.items() if k != "score"} for e in r] for r in results]  # noqa: E731
    assert strip(got) == strip(expected) and any(expected)
    scores = lambda results: torch.tensor([e["score"] for r in results for e in r])  # noqa: E731
    torch.testing.assert_close(scores(got), scores(expected), atol=1e-5, rtol=0)
    with pytest.raises(AttributeError):
        OnnxRuntimeModel(path).task


@pytest.mark.slow
def test_export_command_on_a_fine_tuned_directory(tmp_path):
    from bertforge.cli import main
    from bertforge.data.tokenizer_train import train_tokenizer
    from bertforge.finetune.store import save_task_model

    (tmp_path / "corpus.txt").write_text("a good film . a bad film .\n" * 10)
    tok = train_tokenizer("wordpiece", [tmp_path / "corpus.txt"], 60, progress=False)
    model = build_task_model(Encoder(TINY.replace(vocab_size=tok.vocab_size)), TaskConfig("classify", labels=("neg", "pos")))
    save_task_model(model, tok, tmp_path / "clf")
    assert main(["export", str(tmp_path / "clf"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "task.json").exists()
    assert OnnxRuntimeModel(tmp_path / "out" / "model.onnx").output_names == ["logits"]
    assert main(["export", str(tmp_path / "clf"), "-o", str(tmp_path / "out2"), "--head", "encoder"]) == 0
    assert main(["export", str(tmp_path / "out"), "-o", str(tmp_path / "x"), "--head", "task"]) == 2  # no weights there


@pytest.mark.slow
def test_evaluate_reports_the_accuracy_change_of_onnx_and_int8(tmp_path, capsys):
    """`bertforge evaluate --onnx fp32 int8 --torch-int8`: every variant's metrics and its change vs PyTorch."""
    import json

    from bertforge.cli import main
    from bertforge.data.tokenizer_train import train_tokenizer
    from bertforge.finetune.store import save_task_model

    (tmp_path / "corpus.txt").write_text("a good film . a bad film . great fun . dull and slow .\n" * 10)
    tok = train_tokenizer("wordpiece", [tmp_path / "corpus.txt"], 80, progress=False)
    torch.manual_seed(0)
    model = build_task_model(Encoder(TINY.replace(vocab_size=tok.vocab_size)), TaskConfig("classify", labels=("neg", "pos")))
    save_task_model(model, tok, tmp_path / "clf")
    assert main(["export", str(tmp_path / "clf"), "-o", str(tmp_path / "out"), "--quantize", "int8"]) == 0
    rows = ["text,label"] + [f"{t},{l}" for t, l in [("a good film", "pos"), ("a bad film", "neg"), ("great fun", "pos"),
                                                     ("dull and slow", "neg"), ("good fun", "pos"), ("bad and dull", "neg")]]
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    fp32, int8 = str(tmp_path / "out" / "model.onnx"), str(tmp_path / "out" / "model.int8.onnx")
    assert main(["evaluate", "--model", str(tmp_path / "clf"), "--data", str(tmp_path / "test.csv"),
                 "--onnx", fp32, int8, "--torch-int8"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["variants"]) == {fp32, int8, "torch-int8"}
    assert report["pytorch"]["examples"] == 6.0
    assert report["variants"][fp32]["change"] == {"accuracy": 0.0, "macro_f1": 0.0}  # fp32 ONNX: same predictions
    for name in (int8, "torch-int8"):
        v = report["variants"][name]
        assert 0.0 <= v["metrics"]["accuracy"] <= 1.0
        assert v["change"]["accuracy"] == pytest.approx(v["metrics"]["accuracy"] - report["pytorch"]["accuracy"])
    assert main(["evaluate", "--model", str(tmp_path / "clf"), "--data", str(tmp_path / "test.csv"),
                 "--onnx", str(tmp_path / "nope.onnx")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err


def test_export_command_refuses_an_opset_the_exporter_cannot_write_in_one_line(tmp_path, capfd):
    """--opset outside torch's TorchScript exporter range (7-20 in torch 2.13) is refused before any work; one
    inside it that lacks an operator the model needs is one line too, without torch's IR graph dump."""
    from bertforge.cli import main
    from bertforge.export import opset_range

    low, high = opset_range()
    assert low <= 17 <= high  # the default
    source = tmp_path / "model"
    PretrainingModel(TINY, heads=("mlm",)).save_pretrained(source)
    version = torch.__version__.split("+")[0]
    for opset in (5, 99, high + 1):
        assert main(["export", str(source), "-o", str(tmp_path / "out"), "--opset", str(opset)]) == 2
        out, err = capfd.readouterr()
        assert err.strip() == f"bertforge: error: --opset {opset}: torch {version}'s ONNX exporter writes opsets {low} to {high}"
        assert not (tmp_path / "out").exists()  # refused before anything was written
    assert main(["export", str(source), "-o", str(tmp_path / "out"), "--opset", "9", "--quantize", "int8"]) == 2
    assert "--quantize int8 needs opset 11 or higher" in capfd.readouterr().err
    assert main(["export", str(source), "-o", str(tmp_path / "out"), "--opset", "7"]) == 2  # arange needs 9
    out, err = capfd.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "ONNX opset 7: torch cannot export this model at it (ONNX export failed on arange" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_evaluate_refuses_an_onnx_file_that_is_not_an_export_of_the_model_in_one_line(tmp_path, capsys):
    """evaluate --onnx with a bare-encoder export, another task's, other weights', or (an export without the
    record of what it holds) one whose vocabulary is smaller: one line saying what the file holds and what
    evaluate needs, before any scoring (it was KeyError 'logits' or an ONNX Runtime traceback)."""
    from bertforge.cli import main
    from bertforge.finetune.store import save_task_model
    from taskkit import tiny_config, tokenizer

    tok = tokenizer(tmp_path)

    def saved(name, task, seed=0, **config):
        torch.manual_seed(seed)
        save_task_model(build_task_model(Encoder(tiny_config(**config)), task), tok, tmp_path / name)
        return str(tmp_path / name)

    classify = TaskConfig("classify", labels=("neg", "pos"))
    clf = saved("clf", classify)
    (tmp_path / "test.csv").write_text("text,label\ngood movie,pos\nbad film,neg\n")

    def evaluate(onnx_file):
        code = main(["evaluate", "--model", clf, "--data", str(tmp_path / "test.csv"), "--onnx", str(onnx_file)])
        err = capsys.readouterr().err.strip().splitlines()
        return code, err[-1] if err else ""

    needs = (f"not the fine-tuned classify model with labels neg, pos (outputs logits [batch, 2]); evaluate --onnx "
             f"needs an export of --model {clf} (bertforge export {clf} --output DIR)")
    assert main(["export", clf, "-o", str(tmp_path / "enc"), "--head", "encoder"]) == 0
    assert json.loads((tmp_path / "enc" / "export.json").read_text())["exported_from"]["head"] == "encoder"
    assert evaluate(tmp_path / "enc" / "model.onnx") == (2, (
        f"bertforge: error: --onnx {tmp_path / 'enc' / 'model.onnx'}: it holds the bare encoder, no task head (outputs "
        f"last_hidden_state [batch, sequence, 32], pooler_output [batch, 32]), {needs}"))
    ner = saved("ner", TaskConfig("ner", labels=("O", "B-PER", "I-PER")))
    assert main(["export", ner, "-o", str(tmp_path / "ner-x")]) == 0
    code, err = evaluate(tmp_path / "ner-x" / "model.onnx")
    assert code == 2 and err.endswith(
        "it holds the fine-tuned ner model with labels O, B-PER, I-PER (outputs logits [batch, sequence, 3]), " + needs)
    other = saved("other", classify, seed=1)
    assert main(["export", other, "-o", str(tmp_path / "other-x"), "--quantize", "int8"]) == 0
    for name in ("model.onnx", "model.int8.onnx"):  # the int8 file keeps the record of its source
        code, err = evaluate(tmp_path / "other-x" / name)
        assert code == 2 and f": it was exported from other weights ({other}): the same kind of model" in err
    # an export made before files recorded what they hold, of a model with a 40-token vocabulary
    torch.manual_seed(0)
    small = build_task_model(Encoder(tiny_config().replace(vocab_size=40)), classify)
    old = export_onnx(small, tmp_path / "old.onnx")
    proto = onnx.load(str(old))
    kept = [p for p in proto.metadata_props if p.key != "bertforge_export"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(old))
    assert OnnxRuntimeModel(old).about is None
    code, err = evaluate(old)
    assert code == 2 and "it fails on this model's token ids, so it was exported from another model" in err
    assert "INVALID_ARGUMENT" in err and "Traceback" not in err
    assert main(["export", clf, "-o", str(tmp_path / "clf-x")]) == 0  # its own export is scored
    capsys.readouterr()
    assert evaluate(tmp_path / "clf-x" / "model.onnx") == (0, "")
