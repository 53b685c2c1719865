"""Exact resume through the real `bertforge pretrain` path: a run killed with SIGKILL and resumed ends
bit-identical to the same run uninterrupted (bert: static masks + NSP; electra: generator sampling; and
gradient accumulation), on a small real corpus store."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertforge.cli import main
from test_pretrain import stores  # noqa: F401  (session fixture: small real corpus stores)
from test_train import records, script_env, wait_for_step

TINY = ["hidden_size=32", "intermediate_size=64", "num_heads=2", "batch_size=8", "max_len=64", "max_steps=40",
        "save_every_steps=5", "keep_last=2", "log_every=1", "eval_every=7", "eval_batches=2", "warmup_steps=4"]
SCENARIOS = {
    "bert": ("bert", []),  # static masking (dupe_factor copies) + NSP, dropout 0.1
    "electra": ("electra", []),  # the generator's samples come from torch's RNG
    "accumulation": ("bert", ["grad_accum=2"]),
}


@pytest.fixture(autouse=True)
def one_thread():
    """The reference run trains in this process and the others in subprocesses with OMP_NUM_THREADS=1:
    the same thread count, so the same floating-point reduction order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pretrain_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bertforge", "pretrain", "--no-progress", *args]


def last_checkpoint_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = sorted((run_dir / "checkpoints").glob("step-*[0-9]"))[-1]
    return load_file(latest / "model.safetensors")


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(scenario, stores, tmp_path):  # noqa: F811
    recipe, extra = SCENARIOS[scenario]
    data = ["--recipe", recipe, "--corpus", str(stores("wordpiece")), "--tokenizer", str(stores.root / "tok-wordpiece")]
    settings = ["--set", *TINY, *extra]
    run = tmp_path / "run"
    kill_at = random.randint(6, 34)
    victim = subprocess.Popen(pretrain_command(*data, "--out", str(run), *settings), env=script_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        reached = wait_for_step(run, kill_at, victim, timeout=300)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.wait()
    assert victim.returncode == -signal.SIGKILL and reached < 40, "the run finished before it could be killed"

    resumed = subprocess.run(pretrain_command("--resume", str(run)), env=script_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stopped by max_steps at step 40" in resumed.stdout, f"killed at step {reached}"
    # the uninterrupted run, in this process
    assert main(["pretrain", "--no-progress", *data, "--out", str(tmp_path / "ref"), *settings]) == 0

    # Every trained tensor (ELECTRA: generator and discriminator), the exported model and the log agree.
    assert_bit_identical(last_checkpoint_weights(tmp_path / "ref"), last_checkpoint_weights(run))
    assert_bit_identical(load_file(tmp_path / "ref" / "final" / "model.safetensors"),
                         load_file(run / "final" / "model.safetensors"))
    resumes = [r for r in records(run, "event") if r["event"] == "resume"]
    assert len(resumes) == 1 and 5 <= resumes[0]["step"] <= reached, (resumes, reached)
    for kind in ("train", "eval"):
        ours, ref = records(run, kind), records(tmp_path / "ref", kind)
        assert [r["step"] for r in ours] == [r["step"] for r in ref] == (
            list(range(1, 41)) if kind == "train" else [7, 14, 21, 28, 35, 40])
        assert [(r["tokens"], r["loss"]) for r in ours] == [(r["tokens"], r["loss"]) for r in ref]


@pytest.mark.slow
def test_resume_extends_a_finished_run_and_refuses_model_changes(stores, tmp_path, capsys):  # noqa: F811
    """--resume RUN_DIR --set max_steps=N continues a finished run; a model setting cannot change."""
    args = ["--recipe", "bert", "--corpus", str(stores("wordpiece")), "--tokenizer",
            str(stores.root / "tok-wordpiece"), "--out", str(tmp_path / "run"), "--set", *TINY[:5], "log_every=1",
            "decay=constant", "warmup_steps=1", "eval_every=0", "eval_batches=1", "save_every_steps=0"]
    assert main(["pretrain", "--no-progress", *args, "max_steps=2"]) == 0
    assert main(["pretrain", "--no-progress", "--resume", str(tmp_path / "run"), "--set", "hidden_size=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'hidden_size' cannot change" in err[0]
    assert main(["pretrain", "--resume", str(tmp_path / "run"), "--recipe", "roberta"]) == 2
    assert "drop --recipe" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="max_steps 2 -> 4"):
        assert main(["pretrain", "--no-progress", "--resume", str(tmp_path / "run"), "--set", "max_steps=4"]) == 0
    assert [r["step"] for r in records(tmp_path / "run", "train")] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["max_steps"] == 4


@pytest.mark.slow
def test_init_continues_from_a_checkpoint(stores, tmp_path, capsys):  # noqa: F811
    """--init DIR starts from DIR's weights (lr 0 keeps them) with its architecture and tokenizer."""
    base = ["--recipe", "bert", "--corpus", str(stores("wordpiece")), "--tokenizer", str(stores.root / "tok-wordpiece")]
    quick = ["batch_size=8", "max_len=64", "eval_every=0", "eval_batches=1", "save_every_steps=0", "warmup_steps=1",
             "max_steps=2"]
    assert main(["pretrain", "--no-progress", *base, "--out", str(tmp_path / "a"), "--set", *TINY[:3], *quick]) == 0
    init = tmp_path / "a" / "final"
    assert main(["pretrain", "--no-progress", *base, "--init", str(init), "--out", str(tmp_path / "b"), "--set",
                 *quick, "lr=0", "weight_decay=0"]) == 0
    assert_bit_identical(load_file(init / "model.safetensors"),
                         load_file(tmp_path / "b" / "final" / "model.safetensors"))
    model = json.loads((tmp_path / "b" / "config.json").read_text())["model"]
    assert (model["hidden_size"], model["intermediate_size"]) == (32, 64)  # the checkpoint's, not --size tiny's
    capsys.readouterr()
    assert main(["pretrain", *base, "--init", str(init), "--out", str(tmp_path / "c"), "--set", "num_heads=4"]) == 2
    assert "architecture comes from the checkpoint" in capsys.readouterr().err
    # a store built with another tokenizer than the checkpoint's is refused, with why
    other = stores("chinese-char")
    assert main(["pretrain", "--recipe", "bert", "--corpus", str(other), "--tokenizer",
                 str(stores.root / "tok-chinese-char"), "--init", str(init), "--out", str(tmp_path / "d")]) == 2
    assert "was built with tokenizer" in capsys.readouterr().err
