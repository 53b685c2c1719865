"""`bertforge distill`: pretraining distillation over a corpus store and task distillation from a fine-tuned
teacher, on tiny models; students start as copies of the chosen teacher layers and load back."""

import csv
import json
import random

import pytest
import torch
import torch.nn.functional as F

from bertforge.cli import main
from bertforge.distill import TaskDistillationObjective, student_layers, task_student
from bertforge.errors import BertforgeError
from bertforge.finetune.encode import collate, encode_texts
from bertforge.finetune.store import load_task_model, save_task_model
from bertforge.heads import PretrainingModel
from bertforge.modeling import Encoder
from bertforge.taskdata import Skips, load
from bertforge.tasks import TaskConfig, build_task_model

from taskkit import tiny_config, tokenizer, tokenizer_dir

WORDS = "the a movie film is was very not good great fun bad awful boring john mary lives in paris london".split()


def _layer_tensors(encoder, i):
    return [t.detach().clone() for part in encoder.layer(i) for t in part.state_dict().values()]


def _same_layer(a, i, b, j) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_layer_tensors(a, i), _layer_tensors(b, j), strict=True))


@pytest.fixture(scope="module")
def teacher_and_store(tmp_path_factory):
    """A 4-layer MLM teacher on the taskkit WordPiece vocabulary and a small store built with it."""
    from bertforge.data.corpus import build_corpus

    root = tmp_path_factory.mktemp("distill")
    tok_dir = tokenizer_dir(root)
    rng = random.Random(0)
    text = root / "corpus.txt"
    text.write_text("\n".join(" . ".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 10))) for _ in range(3))
                              for _ in range(120)) + "\n")
    store = root / "tiny.store"
    build_corpus(store, str(tok_dir), [text], workers=0, validation_fraction=0.1, progress=False)
    torch.manual_seed(0)
    teacher = root / "teacher"
    PretrainingModel(tiny_config(num_layers=4), heads=("mlm",)).save_pretrained(teacher)
    tokenizer(root).save_pretrained(teacher)
    return teacher, store


FAST = ["max_steps=3", "batch_size=8", "max_len=32", "eval_batches=1", "eval_every=0", "save_every_steps=0",
        "log_every=1", "warmup_steps=1"]


def test_student_layers_choice():
    assert student_layers(12) == [0, 2, 4, 6, 8, 10]
    assert student_layers(12, 3) == [0, 2, 4]
    assert student_layers(5) == [0, 2, 4]
    assert student_layers(12, None, [0, 2, 4, 7, 9, 11]) == [0, 2, 4, 7, 9, 11]
    with pytest.raises(BertforgeError, match="--student-layers 7: a 12-layer teacher gives 1 to 6"):
        student_layers(12, 7)
    with pytest.raises(BertforgeError, match="0..3"):
        student_layers(4, None, [0, 4])
    with pytest.raises(BertforgeError, match="--layers names 2 layers"):
        student_layers(12, 3, [1, 2])


@pytest.mark.slow
def test_pretraining_distill_cli_writes_a_loadable_student_of_the_chosen_layers(teacher_and_store, tmp_path):
    """With lr=0 the exported student is exactly its initialisation: teacher layers 1 and 3 (via --layers),
    the teacher's embeddings; it loads in bertforge and transformers."""
    import transformers

    from bertforge import AutoModel
    from bertforge.auto import AutoModelForMaskedLM

    teacher_dir, store = teacher_and_store
    run = tmp_path / "run"
    assert main(["distill", "--teacher", str(teacher_dir), "--layers", "1,3", "--corpus", str(store),
                 "--out", str(run), "--no-progress", "--set", *FAST, "lr=0"]) == 0
    assert json.loads((run / "config.json").read_text())["distill"]["layers"] == [1, 3]
    teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir).encoder
    student = AutoModel.from_pretrained(run / "final")
    assert student.config.num_layers == 2
    assert _same_layer(student, 0, teacher, 1) and _same_layer(student, 1, teacher, 3)
    assert torch.equal(student.embeddings.word.weight, teacher.embeddings.word.weight)
    ids = torch.tensor([[2, 7, 8, 9, 3]])
    theirs = transformers.AutoModel.from_pretrained(str(run / "final")).eval()
    with torch.no_grad():
        ours = student.eval()(ids).last_hidden_state
        ref = theirs(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_pretraining_distill_trains_and_resumes(teacher_and_store, tmp_path):
    teacher_dir, store = teacher_and_store
    run = tmp_path / "run"
    assert main(["distill", "--teacher", str(teacher_dir), "--student-layers", "1", "--corpus", str(store),
                 "--out", str(run), "--no-progress", "--set", *FAST]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"soft_loss", "mlm_loss", "cos_loss"} <= set(next(x for x in lines if x.get("kind") == "train"))
    # --resume rebuilds the same 1-layer student from the run's settings and extends the budget
    assert main(["distill", "--resume", str(run), "--no-progress", "--set", "max_steps=4"]) == 0
    from bertforge import AutoModel

    assert AutoModel.from_pretrained(run / "final").config.num_layers == 1


def _held_out(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "eval"' in x]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["distill", "pretrain"])
def test_resume_keeps_the_runs_distillation_settings(command, teacher_and_store, tmp_path):
    """Either command's --resume of a `bertforge distill` run trains on with the run's student layers,
    temperature and loss weights, and keeps them in config.json (pretrain --resume used the defaults
    T=2, 5/2/1 and a student of every other layer, and dropped the "distill" section)."""
    teacher_dir, store = teacher_and_store
    run = tmp_path / "run"
    assert main(["distill", "--teacher", str(teacher_dir), "--student-layers", "1", "--temperature", "4",
                 "--alpha-ce", "0.5", "--alpha-mlm", "3", "--alpha-cos", "0", "--corpus", str(store),
                 "--out", str(run), "--no-progress", "--set", *FAST, "max_steps=2"]) == 0
    settings = json.loads((run / "config.json").read_text())["distill"]
    assert main([command, "--resume", str(run), "--no-progress", "--set", "max_steps=4"]) == 0
    assert json.loads((run / "config.json").read_text())["distill"] == settings
    for record in _held_out(run):  # the loss is the run's weighted sum, before and after the resume
        assert record["loss"] == pytest.approx(0.5 * record["soft_loss"] + 3 * record["mlm_loss"], rel=1e-5)
    assert [r["step"] for r in _held_out(run)] == [2, 4]
    from bertforge import AutoModel

    assert AutoModel.from_pretrained(run / "final").config.num_layers == 1


def test_distill_resume_refuses_flags_that_change_the_run(teacher_and_store, tmp_path, capsys):
    """Flags a resumed run would ignore (its settings come from config.json) are refused, each named,
    before anything is read or written."""
    teacher_dir, store = teacher_and_store
    _fails(capsys, ["distill", "--resume", str(tmp_path / "run"), "--temperature", "9", "--alpha-ce", "3",
                    "--teacher", str(teacher_dir), "--corpus", str(store), "--student-layers", "1"],
           "drop --teacher, --corpus, --student-layers, --temperature, --alpha-ce")
    assert not (tmp_path / "run").exists()


def test_interrupted_distill_says_how_to_resume(monkeypatch, capsys, teacher_and_store, tmp_path):
    """An interrupted run has no final/ yet: the last line says how to continue, not where the student is."""
    import bertforge.distill
    from bertforge.train.loop import TrainResult

    teacher_dir, store = teacher_and_store
    monkeypatch.setattr(bertforge.distill, "distill_pretrain",
                        lambda *a, **k: TrainResult(7, 100, 6.0, "interrupted", None, {}))
    run = tmp_path / "run"
    assert main(["distill", "--teacher", str(teacher_dir), "--corpus", str(store), "--out", str(run)]) == 130
    out = capsys.readouterr().out
    assert f"continue with bertforge distill --resume {run}" in out and "final" not in out


def _fails(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_distill_cli_errors(teacher_and_store, tmp_path, capsys):
    teacher_dir, store = teacher_and_store
    _fails(capsys, ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "x")], "missing --corpus")
    _fails(capsys, ["distill", "--teacher", str(teacher_dir), "--student-layers", "3", "--corpus", str(store),
                    "--out", str(tmp_path / "y"), "--no-progress", "--set", *FAST], "gives 1 to 2 layers")
    _fails(capsys, ["distill", "--teacher", str(teacher_dir), "--corpus", str(store), "--out", str(tmp_path / "z"),
                    "--set", "hidden_size=64"], "model settings cannot change")
    _fails(capsys, ["distill", "--teacher", str(teacher_dir), "--layers", "0;2", "--corpus", str(store),
                    "--out", str(tmp_path / "w")], "expected comma-separated")
    # a task distillation flag is refused by pretraining distillation, not ignored (--lr here would not set lr)
    _fails(capsys, ["distill", "--teacher", str(teacher_dir), "--corpus", str(store), "--out", str(tmp_path / "v"),
                    "--lr", "1e-3", "--epochs", "2", "--no-group-by-length"],
           "--epochs, --lr, --no-group-by-length: task distillation's")
    assert not (tmp_path / "v").exists()


# ---- task distillation ----------------------------------------------------------------------------
@pytest.fixture
def task_teacher(tmp_path):
    """A 4-layer "fine-tuned" classifier (mean pooling, a large random head: confident predictions that
    depend on the input, a stand-in for a trained teacher) and a small labelled CSV."""
    torch.manual_seed(1)
    tok = tokenizer(tmp_path)
    task = TaskConfig("classify", labels=("neg", "pos"), pooling="mean")
    model = build_task_model(Encoder(tiny_config(num_layers=4)), task)
    with torch.no_grad():
        model.classifier.weight.normal_(std=1.0)
    teacher = tmp_path / "teacher"
    save_task_model(model, tok, teacher)
    rng = random.Random(1)
    data = tmp_path / "train.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(32):
            w.writerow([" ".join(rng.choices(WORDS, k=rng.randint(3, 9))), rng.choice(["neg", "pos"])])
    return teacher, data


def test_task_student_copies_layers_and_head(task_teacher):
    teacher, _ = load_task_model(task_teacher[0])
    student = task_student(teacher, layers=[0, 3])
    assert student.encoder.config.num_layers == 2 and student.task == teacher.task
    assert _same_layer(student.encoder, 0, teacher.encoder, 0) and _same_layer(student.encoder, 1, teacher.encoder, 3)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.encoder.embeddings.word.weight, teacher.encoder.embeddings.word.weight)
    student.classifier.weight.data.zero_()  # copies, not shared storage
    assert teacher.classifier.weight.abs().sum() > 0


def _batch(tok, data_path):
    return collate(encode_texts(tok, load(str(data_path), "classify").examples, None, 32, Skips()), tok.pad_token_id)


def _kl_to_teacher(student, teacher, batch) -> tuple[float, float]:
    """Mean KL(teacher || student) over the batch, and the share of equal argmax predictions."""
    with torch.no_grad():
        s, t = student.eval()(batch)["logits"], teacher.eval()(batch)["logits"]
    kl = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), reduction="batchmean", log_target=True)
    return float(kl), float((s.argmax(-1) == t.argmax(-1)).float().mean())


@pytest.mark.slow
def test_task_distillation_on_the_training_loop_moves_the_student_towards_the_teacher(task_teacher, tmp_path):
    """The student's head is re-drawn so that it starts far from the teacher; distilling on the one
    Trainer (soft targets only: the CSV's labels are random) lowers the loss and the KL to the teacher."""
    from bertforge.finetune.run import EpochStream
    from bertforge.train import TrainConfig, Trainer

    teacher, tok = load_task_model(task_teacher[0])
    student = task_student(teacher)
    torch.manual_seed(5)
    with torch.no_grad():
        student.classifier.weight.normal_(std=1.0)
    batch = _batch(tok, task_teacher[1])
    kl_before, agree_before = _kl_to_teacher(student, teacher, batch)
    features = encode_texts(tok, load(str(task_teacher[1]), "classify").examples, {"neg": 0, "pos": 1}, 32, Skips())
    objective = TaskDistillationObjective(teacher, student, temperature=2.0, hard_weight=0.0)
    config = TrainConfig(lr=1e-2, max_steps=20, warmup_steps=1, save_every_steps=0, log_every=2, eval_every=0)
    Trainer(objective, EpochStream(features, ["row"] * len(features), 16, tok.pad_token_id, 0), None, config,
            tmp_path / "run", progress_bar=False).train()
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x).get("kind") == "train"]
    assert losses[-1] < 0.3 * losses[0]
    kl_after, agree_after = _kl_to_teacher(student, teacher, batch)
    assert kl_after < 0.3 * kl_before and agree_after >= max(agree_before, 0.9)


@pytest.mark.slow
def test_task_distillation_cli_writes_a_loadable_student(task_teacher, tmp_path):
    import transformers

    teacher_dir, data = task_teacher
    out = tmp_path / "student"
    assert main(["distill", "--task", "classify", "--teacher", str(teacher_dir), "--train", str(data),
                 "--eval", str(data), "--out", str(out), "--student-layers", "2", "--epochs", "1",
                 "--batch-size", "16", "--no-progress", "--set", "save_every_steps=0"]) == 0
    summary = json.loads((out / "distill.json").read_text())
    assert summary["layers"] == [0, 2] and summary["steps"] == 2
    assert summary["student_parameters"] < summary["teacher_parameters"]
    assert summary["retained"] == pytest.approx(summary["best"] / summary["teacher_score"], abs=1e-4)
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert {"soft_loss", "hard_loss", "agreement", "accuracy"} <= set(train[0])
    for d in ("final", "best"):
        student, _ = load_task_model(out / d)
        assert student.encoder.config.num_layers == 2 and student.task.pooling == "mean"
    assert transformers.AutoModel.from_pretrained(str(out / "final")).config.num_hidden_layers == 2


def test_task_distillation_objective_soft_only_without_labels(task_teacher):
    teacher, tok = load_task_model(task_teacher[0])
    objective = TaskDistillationObjective(teacher, task_student(teacher), temperature=3.0)
    loss, metrics = objective(_batch(tok, task_teacher[1]))
    assert set(metrics) == {"soft_loss", "agreement"} and loss.item() == pytest.approx(metrics["soft_loss"], rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert objective.student.classifier.weight.grad is not None


def test_task_distillation_errors(task_teacher, tmp_path, capsys):
    teacher, data = map(str, task_teacher)
    _fails(capsys, ["distill", "--task", "classify", "--teacher", teacher, "--out", str(tmp_path / "x")],
           "task distillation needs")
    _fails(capsys, ["distill", "--task", "pair", "--teacher", teacher, "--train", data, "--out", str(tmp_path / "y")],
           "is a 'classify' model")
    _fails(capsys, ["distill", "--task", "classify", "--teacher", teacher, "--train", data, "--out", str(tmp_path / "z"),
                    "--alpha-ce", "3"], "--alpha-ce: pretraining distillation's")
