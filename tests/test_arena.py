"""The recipe arena: a short real arena (two variants, a few steps, one task, tiny slices), resumed after a
kill to the same numbers; the claims' verdicts; bad input."""

import json
from pathlib import Path

import pytest

from bertforge import arena
from bertforge.arena import CLAIMS, VARIANTS, Claim, judge
from bertforge.cli import main
from bertforge.errors import BertforgeError
from taskkit import small_store

TINY = ["hidden_size=32", "intermediate_size=64", "num_heads=2", "batch_size=8", "max_len=64", "eval_batches=2",
        "save_every_steps=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return small_store(tmp_path_factory.mktemp("arena"), "peoples-daily", "chinese-char", 1200, "pd.store")


def _args(store: Path, out: Path, recipes: str = "bert-no-nsp,roberta-wwm-ext") -> list[str]:
    return ["arena", "--corpus", str(store), "--out", str(out), "--recipes", recipes, "--tasks", "chinese-sentiment",
            "--budget-steps", "4", "--scale", "0.02", "--no-progress", "--set", *TINY]


def _numbers(out: Path) -> dict:
    """Everything in arena.json that must be identical between runs (not timings)."""
    data = json.loads((out / "arena.json").read_text())
    return {v: {"steps": r["pretrain"]["steps"], "tokens": r["pretrain"]["tokens"], "eval": r["pretrain"]["eval"],
                "parameters": r["parameters"],
                "tasks": {t: (row["metrics"], row["steps"], row["test_examples"]) for t, row in r["tasks"].items()}}
            for v, r in data["results"].items()}


@pytest.mark.slow
def test_short_arena_runs_resumes_after_a_kill_and_is_deterministic(store, tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight"
    assert main(_args(store, straight)) == 0
    numbers = _numbers(straight)
    assert set(numbers) == {"bert-no-nsp", "roberta-wwm-ext"}
    for v, r in numbers.items():
        assert r["steps"] == 4 and r["tokens"] > 0 and r["eval"]["mlm_loss"] > 0
        metrics, steps, n_test = r["tasks"]["chinese-sentiment"]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and steps > 0 and n_test == 20
    report = (straight / "report.md").read_text()
    assert "| bert-no-nsp | bert |" in report and "| roberta-wwm-ext | roberta-wwm-ext |" in report
    assert (straight / "score_vs_time.png").stat().st_size > 1000
    assert (straight / "loss_curves.png").stat().st_size > 1000

    # Killed during the first variant's fine-tuning: the pretraining is recorded, the task is not.
    killed = tmp_path / "killed"
    real = arena.finetune_variant

    def die(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(arena, "finetune_variant", die)
    assert main(_args(store, killed)) != 0  # the CLI reports the interruption
    state = json.loads((killed / "arena.json").read_text())
    assert "pretrain" in state["results"]["bert-no-nsp"] and not state["results"]["bert-no-nsp"]["tasks"]
    first_log = (killed / "runs" / "bert-no-nsp" / "metrics.jsonl").read_text()
    monkeypatch.setattr(arena, "finetune_variant", real)
    capsys.readouterr()
    assert main(_args(store, killed)) == 0
    out = capsys.readouterr().out
    assert "bert-no-nsp: pretraining already done (4 steps)" in out
    assert (killed / "runs" / "bert-no-nsp" / "metrics.jsonl").read_text() == first_log  # not redone
    assert _numbers(killed) == numbers  # the same numbers as the uninterrupted arena

    # A finished arena reruns nothing; changed settings are refused; a new variant is added on top.
    capsys.readouterr()
    assert main(_args(store, killed)) == 0
    assert "fine-tuning" not in capsys.readouterr().out
    assert main(_args(store, killed)[:-len(TINY)] + [*TINY, "lr=1e-3"]) == 2
    assert "pretrain_settings" in capsys.readouterr().err
    assert main(_args(store, killed, "bert-no-nsp,random-init")) == 0
    assert set(_numbers(killed)) == {"bert-no-nsp", "roberta-wwm-ext", "random-init"}
    assert _numbers(killed)["random-init"]["steps"] == 0


def test_budget_minutes_is_calibrated_into_a_stored_plan(store, tmp_path):
    settings = arena.ArenaSettings(corpus=str(store), variants=("bert-no-nsp",), tasks=(), budget_minutes=0.05,
                                   pretrain_settings=tuple(TINY), calibration_steps=5)
    data = arena.run_arena(tmp_path / "a", settings, progress=False, say=lambda m: None)
    plan = data["plan"]["bert-no-nsp"]
    assert plan["seconds_per_step"] > 0 and plan["steps"] == max(1, int(3 / plan["seconds_per_step"]))
    assert data["results"]["bert-no-nsp"]["pretrain"]["steps"] == plan["steps"]
    assert not (tmp_path / "a" / "calibration" / "bert-no-nsp").exists()


def test_variants_resolve_to_valid_specs(store):
    """Every variant builds a valid pretraining spec; ablations change what they say they change."""
    from bertforge.pretrain import spec_recipe

    settings = arena.ArenaSettings(corpus=str(store), variants=(), tasks=(), budget_steps=1)
    for name in VARIANTS:
        arena.variant_spec(name, settings, 1)
    r = spec_recipe(arena.variant_spec("bert-no-nsp", settings, 1))
    assert r.objectives == ("mlm",) and r.dynamic and r.builder == "doc-sentences"
    assert spec_recipe(arena.variant_spec("roberta-wwm-ext-char", settings, 1)).mask_unit == "token"
    assert spec_recipe(arena.variant_spec("macbert-mask", settings, 1)).corruption == "mask"
    assert arena.variant_spec("albert-e/8", settings, 1).model["embedding_size"] == 128 // 8
    assert set(arena.CLAIM_VARIANTS) <= set(VARIANTS)


def test_claim_verdicts():
    def rec(score, n=1000):
        return {"tasks": {"t": {"score": score, "test_examples": n}}}

    claim = Claim("p", "x beats y", "x", "y")
    assert judge(claim, {"x": rec(0.85), "y": rec(0.75)}, ("t",))["verdict"] == "reproduced"
    assert judge(claim, {"x": rec(0.80), "y": rec(0.79)}, ("t",))["verdict"] == "same direction, within noise"
    assert judge(claim, {"x": rec(0.70), "y": rec(0.80)}, ("t",))["verdict"] == "not reproduced (reversed)"
    no_worse = Claim("p", "x is no worse", "x", "y", kind="no-worse")
    assert judge(no_worse, {"x": rec(0.79), "y": rec(0.80)}, ("t",))["verdict"] == "consistent (no difference beyond noise)"
    assert judge(no_worse, {"x": rec(0.90), "y": rec(0.80)}, ("t",))["verdict"] == "reproduced (better)"
    assert judge(no_worse, {"x": rec(0.60), "y": rec(0.80)}, ("t",))["verdict"] == "not reproduced"
    assert judge(claim, {"x": rec(0.8)}, ("t",)) is None  # a variant not run: no verdict
    on_task = Claim("p", "x on u", "x", "y", tasks=("u",))
    assert judge(on_task, {"x": rec(0.9), "y": rec(0.1)}, ("t",)) is None  # its task not run
    assert all(c.kind in ("better", "no-worse") for c in CLAIMS)


def test_bad_input(store, tmp_path, capsys):
    cases = [
        (["--recipes", "bert,bort", "--budget-steps", "1"], "unknown variant 'bort'"),
        (["--tasks", "imdb", "--budget-steps", "1"], "unknown task 'imdb'"),
        (["--tasks", "cmrc2018", "--budget-steps", "1"], "needs --data-dir"),
        (["--tasks", "cmrc2018", "--data-dir", str(tmp_path), "--budget-steps", "1"], "cmrc2018_trial.json does not exist"),
        ([], "exactly one of --budget-minutes and --budget-steps"),
        (["--budget-steps", "1", "--set", "hiden=3"], "unknown key 'hiden'"),
    ]
    for extra, message in cases:
        code = main(["arena", "--corpus", str(store), "--out", str(tmp_path / "x"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (extra, err)
    assert main(["arena", "--list"]) == 0
    assert "bert-no-nsp" in capsys.readouterr().out
    with pytest.raises(BertforgeError, match="corpus store"):
        arena.run_arena(tmp_path / "y", arena.ArenaSettings(corpus=str(tmp_path / "nope"), variants=("bert",),
                                                             tasks=(), budget_steps=1), progress=False)
