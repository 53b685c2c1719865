"""`bertforge pretrain` end to end: every recipe on a real (small) corpus, the CLI, bad input."""

import json
from pathlib import Path

import pytest
import torch

from bertforge.cli import main
from bertforge.data.corpus import build_corpus
from bertforge.data.tokenizer_train import train_tokenizer
from bertforge.errors import BertforgeError
from bertforge.pretrain import make_spec, pretrain, spec_from_run, split_settings
from bertforge.recipes import RECIPES
from taskkit import source_text
from test_train import records

CHINESE_KINDS = {"chinese-char", "chinese-word"}
FAST = ["max_steps=3", "batch_size=8", "max_len=64", "eval_batches=2", "eval_every=0", "save_every_steps=0",
        "log_every=1", "warmup_steps=1"]


@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    """One small real corpus store per tokenizer kind, built on demand (People's Daily / Wikipedia)."""
    root = tmp_path_factory.mktemp("stores")
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            source = "peoples-daily" if kind in CHINESE_KINDS else "wiki-sample"
            text = source_text(source, root / f"{kind}.txt")
            tok = root / f"tok-{kind}"
            train_tokenizer(kind, [text], vocab_size=1200 if kind != "bpe" else 800, out=tok, progress=False)
            store = root / f"{kind}.store"
            build_corpus(store, str(tok), [text], workers=0, validation_fraction=0.1, progress=False)
            made[kind] = store
        return made[kind]

    get.root = root
    return get


def _teacher(stores, kind="wordpiece") -> Path:
    """A tiny BERT checkpoint with an MLM head and the store's tokenizer, as a distillation teacher."""
    from bertforge.data.tokenizers import AutoTokenizer
    from bertforge.heads import PretrainingModel
    from bertforge.recipes import model_config

    store = stores(kind)
    out = stores.root / "teacher"
    if not (out / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(stores.root / f"tok-{kind}")
        config = model_config("bert", "tiny", tok.vocab_size, num_layers=4, pad_token_id=tok.pad_token_id)
        PretrainingModel(config, heads=("mlm",)).save_pretrained(out)
        tok.save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_runs_end_to_end(name, stores, tmp_path):
    store = stores(RECIPES[name].tokenizer)
    if name == "distilbert":  # the student is the teacher's shape: no size, no model settings
        size, model, extra = None, [], {"teacher": str(_teacher(stores))}
    else:
        size, model, extra = "tiny", ["hidden_size=32", "intermediate_size=64", "num_heads=2"], {}
    spec = make_spec(name, str(store), size, assignments=FAST + model,
                     tokenizer=str(stores.root / f"tok-{RECIPES[name].tokenizer}"), **extra)
    result = pretrain(spec, tmp_path / "run", progress_bar=False)
    assert result.step == 3 and result.stopped_by == "max_steps"
    assert result.eval_metrics and all(torch.isfinite(torch.tensor(v)) for v in result.eval_metrics.values())
    final = tmp_path / "run" / "final"
    from bertforge.auto import AutoModel

    AutoModel.from_pretrained(final)  # the exported model loads back
    assert (final / "tokenizer_config.json").is_file()
    assert (tmp_path / "run" / "report.md").is_file()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(line.get("kind") == "train" for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "roberta", "albert", "electra", "spanbert"])
def test_loss_falls_over_50_steps(name, stores, tmp_path):
    store = stores(RECIPES[name].tokenizer)
    settings = ["max_steps=50", "batch_size=16", "max_len=64", "eval_every=0", "eval_batches=2",
                "save_every_steps=0", "log_every=5", "warmup_steps=5", "grad_accum=1",
                # LAMB scales each layer's step by ||w|| / ||update||: tiny initial weights need a larger lr
                "lr=1e-2" if RECIPES[name].optim.get("optimizer") == "lamb" else "lr=1e-3"]
    spec = make_spec(name, str(store), "tiny", assignments=settings,
                     tokenizer=str(stores.root / f"tok-{RECIPES[name].tokenizer}"))
    pretrain(spec, tmp_path / "run", progress_bar=False)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x).get("kind") == "train"]
    assert len(losses) == 10
    # a clear fall (from ~ln V towards the unigram entropy) in 50 small steps, not noise
    assert sum(losses[-2:]) / 2 < 0.95 * sum(losses[:2]) / 2, losses


def test_settings_are_routed_and_checked():
    routed = split_settings({"lr": 1, "hidden_size": 64, "max_len": 32, "train.seed": 3,
                             "model": {"sharing": "all"}}, "x")
    assert routed == {"model": {"hidden_size": 64, "sharing": "all"}, "train": {"lr": 1, "seed": 3},
                      "data": {"max_len": 32}, "recipe": {}}
    with pytest.raises(BertforgeError, match="unknown key 'hiden_size'.*valid keys: .*model.hidden_size"):
        split_settings({"hiden_size": 3}, "--set")
    with pytest.raises(BertforgeError, match="unknown recipe 'bart'; valid recipes: bert"):
        make_spec("bart", "x")
    with pytest.raises(BertforgeError, match="unknown --size"):
        make_spec("bert", "x", size="huge")
    with pytest.raises(BertforgeError, match="lr"):
        make_spec("bert", "x", assignments=["lr=fast"])


def test_recipe_settings_change_the_run(stores):
    """recipe.* ablations reach the masker, the builder and the objectives; bad values are refused."""
    from bertforge.pretrain import spec_recipe

    assert split_settings({"recipe.dynamic": "false"}, "x")["recipe"] == {"dynamic": "false"}
    with pytest.raises(BertforgeError, match="unknown key 'recipe.tokenizer'.*recipe.mask_unit"):
        split_settings({"recipe.tokenizer": "bpe"}, "--set")
    store = stores("wordpiece")
    spec = make_spec("bert", str(store), assignments=["recipe.builder=doc-sentences", "recipe.objectives=mlm",
                                                      "recipe.dynamic=true", "recipe.mask_unit=word"])
    r = spec_recipe(spec)
    assert (r.builder, r.objectives, r.dynamic, r.mask_unit) == ("doc-sentences", ("mlm",), True, "word")
    assert spec_recipe(make_spec("bert", str(store))).objectives == ("mlm", "nsp")
    for bad, message in [("recipe.dynamic=maybe", "expected true or false"),
                         ("recipe.objectives=mlm,foo", "expected objectives from"),
                         ("recipe.mask_unit=char", "expected one of token, word"),
                         ("recipe.builder=pairs", "expected one of nsp")]:
        with pytest.raises(BertforgeError, match=message):
            make_spec("bert", str(store), assignments=[bad])
    with pytest.raises(BertforgeError, match="cannot change"):
        make_spec("electra", str(store), assignments=["recipe.objectives=mlm"])


def test_cli_bad_input_one_line(tmp_path, capsys, stores):
    assert main(["pretrain", "--recipe", "nope", "--corpus", "x", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "valid recipes" in err[0]
    assert main(["pretrain", "--recipe", "bert", "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
    # a store built with another tokenizer than the one given is refused, with why
    store = stores("wordpiece")
    other = stores.root / "tok-chinese-char"
    stores("chinese-char")
    code = main(["pretrain", "--recipe", "bert", "--corpus", str(store), "--tokenizer", str(other),
                 "--out", str(tmp_path / "r2"), "--set", "max_steps=1"])
    assert code == 2 and "was built with tokenizer" in capsys.readouterr().err


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("setting, message", [
    ("num_heads=0", "--set: num_heads=0: expected a whole number > 0"),  # was a ZeroDivisionError
    ("num_heads=3", "--set: num_heads=3: expected a divisor of hidden_size=128"),
    ("embedding_size=-4", "--set: embedding_size=-4: expected a whole number >= 0"),
    ("initializer_range=-1", "--set: initializer_range=-1.0: expected a number > 0"),
    ("hidden_dropout=2", "--set: hidden_dropout=2.0: expected a probability in [0, 1)"),
    ("intermediate_size=0", "--set: intermediate_size=0: expected a whole number > 0"),
    ("lr=nan", "--set: lr=nan: expected a number >= 0"),  # was torch's "Invalid learning rate" after the run began
    ("lr=inf", "--set: lr=inf: expected a finite number (a number >= 0)"),
    ("clip_norm=-1", "--set: clip_norm=-1.0: expected a number >= 0"),
    ("batch_size=0", "--set: batch_size=0: expected a whole number > 0"),
    ("mask_budget=1.5", "--set: mask_budget=1.5: expected a fraction in (0, 1]"),
    ("vocab_size=10", "model.vocab_size=10: expected at least"),  # was a TypeError
])
def test_bad_settings_are_refused_before_anything_is_written(setting, message, stores, tmp_path, capsys):
    store = stores("wordpiece")
    run = tmp_path / "run"
    error = _one_line_error(capsys, ["pretrain", "--recipe", "bert", "--corpus", str(store), "--out", str(run),
                                     "--no-progress", "--set", *FAST, setting])
    assert message in error
    assert not run.exists()


def test_errors_from_a_config_file_name_the_file(tmp_path, capsys):
    """A bad value from --config FILE is reported against FILE, one from --set against --set; a file value
    that a --set value completes (heads there, width here) is accepted."""
    settings = tmp_path / "settings.yaml"
    settings.write_text("model:\n  num_heads: 0\n")
    base = ["pretrain", "--recipe", "bert", "--corpus", str(tmp_path / "x"), "--out", str(tmp_path / "run")]
    assert _one_line_error(capsys, [*base, "--config", str(settings)]).endswith(
        f"{settings}: num_heads=0: expected a whole number > 0")
    settings.write_text("lr: fast\nmax_steps: 2\n")
    assert f"{settings}: lr='fast' is not a valid float" in _one_line_error(capsys, [*base, "--config", str(settings)])
    settings.write_text("train: {max_steps: 2}\n")
    assert "--set: max_len=0:" in _one_line_error(capsys, [*base, "--config", str(settings), "--set", "max_len=0"])
    settings.write_text("model: {num_heads: 3}\n")
    spec = make_spec("bert", str(tmp_path / "x"), config_file=str(settings), assignments=["hidden_size=48"])
    assert spec.model == {"num_heads": 3, "hidden_size": "48"}
    settings.write_text("train: {max_steps: 2, max_minutes: .inf, clip_norm: .inf}\n")  # no limit: accepted
    assert make_spec("bert", str(tmp_path / "x"), config_file=str(settings)).train["max_minutes"] == float("inf")
    assert not (tmp_path / "run").exists()


def test_teacher_and_distilbert_student_flags_are_checked(stores, tmp_path, capsys):
    """distilbert's student is every other teacher layer at the teacher's width (docs/pretraining.md): --size
    and model settings are refused, not ignored; --teacher with any other recipe is refused too."""
    teacher = str(_teacher(stores))
    base = ["pretrain", "--recipe", "distilbert", "--corpus", str(stores("wordpiece")), "--out", str(tmp_path / "r")]
    assert "--size mini: the distilbert student is every other layer of the teacher" in _one_line_error(
        capsys, [*base, "--teacher", teacher, "--size", "mini"])
    assert "--set: model.hidden_size: the distilbert student" in _one_line_error(
        capsys, [*base, "--teacher", teacher, "--set", "hidden_size=64"])
    assert "needs --teacher" in _one_line_error(capsys, base)
    assert "recipe 'bert' trains no student, drop --teacher" in _one_line_error(
        capsys, ["pretrain", "--recipe", "bert", "--corpus", str(stores("wordpiece")), "--out", str(tmp_path / "r"),
                 "--teacher", teacher])
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_resume_from_another_directory(stores, tmp_path, monkeypatch):
    """Paths given relative to the working directory are recorded absolute: --resume works from anywhere,
    and does not pick up another directory's store of the same name."""
    import shutil

    (tmp_path / "a").mkdir()
    shutil.copytree(stores("wordpiece"), tmp_path / "a" / "c.store")
    monkeypatch.chdir(tmp_path / "a")
    assert main(["pretrain", "--recipe", "roberta", "--corpus", "c.store", "--out", "run", "--no-progress", "--set",
                 *FAST, "max_steps=1", "hidden_size=32", "intermediate_size=64", "num_heads=2"]) == 0
    recorded = json.loads((tmp_path / "a" / "run" / "config.json").read_text())["pretrain"]
    assert recorded["corpus"] == str(tmp_path / "a" / "c.store")
    (tmp_path / "b" / "c.store").mkdir(parents=True)  # a decoy of the same name: not a store at all
    monkeypatch.chdir(tmp_path / "b")
    with pytest.warns(UserWarning, match="max_steps 1 -> 2"):
        assert main(["pretrain", "--resume", str(tmp_path / "a" / "run"), "--no-progress", "--set", "max_steps=2"]) == 0
    assert [r["step"] for r in records(tmp_path / "a" / "run", "train")] == [1, 2]


def test_resume_of_a_run_recorded_with_relative_paths(tmp_path, monkeypatch):
    """Runs of older versions recorded paths as given: they resolve against the current directory, and a
    missing one is refused with where to resume from."""
    run = tmp_path / "run"
    run.mkdir()
    spec = {"recipe": "bert", "corpus": "c.store", "tokenizer": "tok"}
    (run / "config.json").write_text(json.dumps({"pretrain": spec}))
    (tmp_path / "c.store").mkdir()
    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    resumed = spec_from_run(run)
    assert (resumed.corpus, resumed.tokenizer) == (str(tmp_path / "c.store"), str(tmp_path / "tok"))
    monkeypatch.chdir(run)
    with pytest.raises(BertforgeError, match="records corpus 'c.store' relative to the directory the run was "
                                             "started in.*resume from that directory"):
        spec_from_run(run)


@pytest.mark.slow
def test_cli_run_and_exact_resume(stores, tmp_path):
    """The CLI path: a 6-step run, and the same run done as 3 steps + --resume, end bit-identical."""
    from safetensors.torch import load_file

    store = str(stores("wordpiece"))
    tok = str(stores.root / "tok-wordpiece")
    common = ["--recipe", "bert", "--corpus", store, "--tokenizer", tok, "--no-progress", "--set",
              "batch_size=8", "max_len=64", "eval_every=0", "eval_batches=1", "log_every=1", "warmup_steps=1",
              "hidden_size=32", "intermediate_size=64", "num_heads=2", "hidden_dropout=0.1"]
    flags, settings = common[:8], common[8:]  # flags end with "--set"
    for run in ("a", "b"):
        assert main(["pretrain", "--out", str(tmp_path / run), *flags, *settings, "max_steps=6",
                     "save_every_steps=3"]) == 0
    # b again, killed after step 3 is simulated by deleting its final checkpoint and resuming
    ckpts = sorted((tmp_path / "b" / "checkpoints").iterdir())
    import shutil

    shutil.rmtree(ckpts[-1])
    shutil.rmtree(tmp_path / "b" / "final")
    assert spec_from_run(tmp_path / "b").recipe == "bert"
    assert main(["pretrain", "--resume", str(tmp_path / "b"), "--no-progress"]) == 0
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
