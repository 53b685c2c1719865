"""The training loop on toy data: run directory contents, schedule, config, precision, bad input.

This module also holds the toy objective and data stream the other engine tests use, and a command-line
entry point (``python tests/test_train.py RUN_DIR ...``) so the resume, signal and torchrun tests can
train in subprocesses.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.heads import PretrainingModel
from bertforge.train import TrainConfig, Trainer, lr_multiplier, seed_everything
from bertforge.train.optim import progress

HERE = Path(__file__).resolve()
VOCAB, MASK_ID = 100, 4
ZIPF = 1.0 / np.arange(1, VOCAB - 4)
ZIPF /= ZIPF.sum()


# ---- toy data and objectives -----------------------------------------------------------------------
class ToyStream:
    """A deterministic infinite stream of MLM micro-batches with a resumable position.

    ``fixed``: no padding and exactly ``length // 5`` predicted tokens per row, so a per-token mean loss
    over the batch equals the mean of per-half means (what DDP computes). ``delay`` slows each batch
    (so a subprocess can be stopped mid-run); ``poison_at`` marks one batch for the objective to turn into
    NaN; ``limit`` makes the stream finite. With ``world_size`` > 1 it is sharded by rank, as the real
    PretrainingStream is: it yields rows [rank * B/W, (rank + 1) * B/W) of the global batch."""

    def __init__(self, seed=0, batch=4, length=16, fixed=False, delay=0.0, poison_at=-1, limit=0,
                 rank=0, world_size=1):
        self.seed, self.batch, self.length, self.fixed = seed, batch, length, fixed
        self.rank, self.world_size = rank, world_size
        self.delay, self.poison_at, self.limit = delay, poison_at, limit
        self.rng = np.random.default_rng(seed)
        self.position = 0
        self.order = np.arange(8)  # an array in the state, as real streams have (shuffled document order)

    def state_dict(self):
        return {"position": self.position, "rng": self.rng.bit_generator.state, "order": self.order.copy()}

    def load_state_dict(self, state):
        self.position = state["position"]
        self.rng.bit_generator.state = state["rng"]
        self.order = np.asarray(state["order"])

    def __iter__(self):
        while not self.limit or self.position < self.limit:
            if self.delay:
                time.sleep(self.delay)
            yield self._make()

    def _make(self):
        b, n = self.batch, self.length
        ids = self.rng.choice(np.arange(5, VOCAB), size=(b, n), p=ZIPF)  # skewed, so there is much to learn
        ids[:, 1::2] = (ids[:, 0::2] + 7) % (VOCAB - 5) + 5  # learnable: odd tokens follow from even ones
        ids[:, 0] = 2
        if self.fixed:
            lengths = np.full(b, n)
            chosen = np.zeros((b, n), dtype=bool)
            for row in range(b):
                chosen[row, self.rng.choice(np.arange(1, n), size=n // 5, replace=False)] = True
        else:
            lengths = self.rng.integers(n // 2, n + 1, size=b)
            chosen = (self.rng.random((b, n)) < 0.2) & (np.arange(n)[None] < lengths[:, None])
            chosen[:, 0] = False
            chosen[:, 1] = True
        mask = (np.arange(n)[None] < lengths[:, None]).astype(np.int64)
        labels = np.where(chosen, ids, -100)
        inputs = np.where(chosen, MASK_ID, ids) * mask
        self.order = np.roll(self.order, 1)
        batch = {
            "input_ids": torch.from_numpy(inputs), "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.zeros(b, n, dtype=torch.int64), "mlm_labels": torch.from_numpy(labels),
            "poison": torch.full((b,), float(self.position == self.poison_at)),
        }
        self.position += 1
        share = b // self.world_size
        return {k: v[self.rank * share:(self.rank + 1) * share] for k, v in batch.items()}


def eval_factory(n=3):
    return lambda: ToyStream(seed=123, fixed=True, limit=n)


class ToyMLM(nn.Module):
    """MLM loss (mean over predicted tokens) and accuracy of a tiny PretrainingModel."""

    def __init__(self, dropout=0.1):
        super().__init__()
        config = PRESETS["test-tiny"].replace(hidden_dropout=dropout, attention_dropout=dropout)
        self.model = PretrainingModel(config, heads=("mlm",))

    def forward(self, batch):
        labels = batch["mlm_labels"]
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                         mlm_positions=labels != -100)
        logits, targets = out["mlm_logits"], labels[labels != -100]
        loss = F.cross_entropy(logits.float(), targets)
        loss = loss * torch.where(batch["poison"].any(), torch.tensor(float("nan")), torch.tensor(1.0))
        acc = (logits.argmax(-1) == targets).float().mean()
        return loss, {"mlm_loss": loss.item(), "mlm_acc": acc.item()}


class ToySampling(ToyMLM):
    """ELECTRA-like: samples replacements from the MLM distribution with its own torch.Generator, and
    draws from the global torch, numpy and python RNGs, then adds a replaced-token loss. Exact resume
    needs every one of these states restored."""

    def __init__(self, dropout=0.1):
        super().__init__(dropout)
        self.sampler = torch.Generator().manual_seed(1234)
        self.rtd = nn.Linear(PRESETS["test-tiny"].hidden_size, 1)

    def forward(self, batch):
        labels = batch["mlm_labels"]
        positions = labels != -100
        mlm_loss, metrics = super().forward(batch)
        with torch.no_grad():
            logits = self.model(batch["input_ids"], batch["attention_mask"], mlm_positions=positions)["mlm_logits"]
            sampled = torch.multinomial(logits.float().softmax(-1), 1, generator=self.sampler).squeeze(-1)
        corrupted = batch["input_ids"].clone()
        corrupted[positions] = sampled
        noise = torch.rand(corrupted.shape) < 0.05  # global torch RNG
        corrupted[noise] = int(np.random.randint(5, VOCAB))  # numpy RNG
        hidden = self.model.encoder(corrupted, batch["attention_mask"]).last_hidden_state
        replaced = (corrupted != torch.where(positions, labels, batch["input_ids"])).float()
        rtd_loss = F.binary_cross_entropy_with_logits(self.rtd(hidden).squeeze(-1), replaced)
        weight = 1.0 + random.random()  # python RNG
        return mlm_loss + weight * rtd_loss, {**metrics, "rtd_loss": rtd_loss.item()}


OBJECTIVES = {"mlm": ToyMLM, "sampling": ToySampling}


def tiny_config(**changes) -> TrainConfig:
    base = dict(lr=3e-3, max_steps=12, warmup_steps=2, eval_every=0, eval_batches=0, save_every_steps=4,
                log_every=2, keep_last=5)
    return TrainConfig(**{**base, **changes})


def make_trainer(run_dir, config=None, objective="mlm", dropout=0.1, stream=None, **kwargs) -> Trainer:
    seed_everything(0)
    obj = OBJECTIVES[objective](dropout)
    return Trainer(obj, stream or ToyStream(), eval_factory(), config or tiny_config(), run_dir,
                   **{"progress_bar": False, **kwargs})


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = sorted((Path(run_dir) / "checkpoints").glob("step-*[0-9]"))[-1]
    return load_file(latest / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def records(run_dir, kind):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# ---- subprocess runs -------------------------------------------------------------------------------
def script_command(run_dir, *args) -> list[str]:
    return [sys.executable, str(HERE), str(run_dir), *map(str, args)]


def script_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """Poll metrics.jsonl (log_every=1) until a train record at ``step`` or later appears."""
    path, deadline = run_dir / "metrics.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training exited early: {proc.communicate()}"
        if path.is_file():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines()
                     if line.endswith("}") and '"kind": "train"' in line]
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="train a toy objective (for the engine's subprocess tests)")
    p.add_argument("run_dir")
    p.add_argument("--objective", default="mlm", choices=sorted(OBJECTIVES))
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--fixed", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--presharded", action="store_true", help="the stream itself yields this rank's rows")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    config = tiny_config().with_overrides(args.set)
    seed_everything(0)
    objective = OBJECTIVES[args.objective](args.dropout)
    ranks = {"rank": int(os.environ.get("RANK", 0)), "world_size": int(os.environ.get("WORLD_SIZE", 1))}
    stream = ToyStream(batch=args.batch, fixed=args.fixed, delay=args.delay, **(ranks if args.presharded else {}))
    result = Trainer(objective, stream, eval_factory(), config, args.run_dir, resume=args.resume,
                     progress_bar=False).train()
    print(json.dumps({"step": result.step, "stopped_by": result.stopped_by}))
    return 0


# ---- tests -----------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine the threads' barriers cost
    more than the math; the subprocess runs use one thread as well."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_loss_falls_and_run_directory_is_complete(tmp_path):
    exported = []
    config = tiny_config(max_steps=40, lr=5e-3, eval_every=20, save_every_steps=10, keep_last=2, log_every=5)
    trainer = make_trainer(tmp_path, config, export_fn=exported.append, run_info={"recipe": "toy"})
    result = trainer.train()
    assert (result.step, result.stopped_by) == (40, "max_steps")
    train = records(tmp_path, "train")
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert {"step", "tokens", "lr", "loss", "grad_norm", "mlm_loss", "mlm_acc", "padding", "tokens_per_s",
            "elapsed"} <= set(train[0])
    # padding: the share of each window's batch slots (5 steps x 4 rows x 16 positions) without a token
    seen = [0] + [r["tokens"] for r in train]
    assert [r["padding"] for r in train] == [round(1 - (b - a) / (5 * 4 * 16), 4) for a, b in zip(seen, seen[1:])]
    assert 0.1 < train[0]["padding"] < 0.4  # the toy stream's rows are 8-16 of 16 positions long
    assert train[-1]["loss"] < 0.9 * train[0]["loss"]
    assert train[-1]["tokens"] == result.tokens > 0
    evals = records(tmp_path, "eval")
    assert [r["step"] for r in evals] == [20, 40] and evals[1]["loss"] < evals[0]["loss"]
    assert result.eval_metrics["mlm_acc"] == evals[1]["mlm_acc"]
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step-00000030", "step-00000040"]
    assert result.checkpoint == tmp_path / "checkpoints" / "step-00000040"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert config_json["train"]["max_steps"] == 40 and config_json["recipe"] == "toy"
    report = (tmp_path / "report.md").read_text()
    assert "plots/loss.png" in report and "plots/accuracy.png" in report and "max_steps" in report
    for png in ("loss.png", "accuracy.png", "lr.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    assert exported == [tmp_path / "final"]


def test_in_process_resume_matches_uninterrupted_run(tmp_path):
    """Resume from the step-8 checkpoint of a 12-step run (with accumulation, evaluations in between and
    dropout): the same final weights, bit for bit."""
    config = tiny_config(grad_accum=2, eval_every=3)
    make_trainer(tmp_path / "a", config).train()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000012")
    result = make_trainer(tmp_path / "b", config, resume=True).train()
    assert result.step == 12
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))
    assert [r["step"] for r in records(tmp_path / "b", "train")] == [2, 4, 6, 8, 10, 12]
    events = [r["event"] for r in records(tmp_path / "b", "event")]
    assert events[events.index("resume"):] == ["resume", "checkpoint", "stop"]


def test_token_budget_and_finite_stream(tmp_path, monkeypatch):
    bars, make_bar = [], Trainer._progress_bar
    monkeypatch.setattr(Trainer, "_progress_bar", lambda self: bars.append(make_bar(self)) or bars[-1])
    result = make_trainer(tmp_path / "t", tiny_config(max_steps=0, max_tokens=300, warmup_steps=0),
                          progress_bar=True).train()
    assert result.stopped_by == "max_tokens" and result.tokens > 300
    # the last step passed the budget; its progress bar stops at 100% (tqdm warns of a fraction above 1)
    assert bars[0].n == bars[0].total == 300
    result = make_trainer(tmp_path / "m", tiny_config(max_steps=0, max_minutes=0.02, warmup_steps=0),
                          progress_bar=True).train()
    assert result.stopped_by == "max_minutes" and result.elapsed >= 1.2
    assert bars[1].total == 1 and bars[1].n == 1 and isinstance(bars[1].n, int)  # whole seconds, not 1.2037...
    finite = ToyStream(limit=5)
    result = make_trainer(tmp_path / "d", tiny_config(grad_accum=2), stream=finite).train()
    assert (result.stopped_by, result.step) == ("data", 2)


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, max_steps=100, warmup_steps=10)
    lrs = [lr_multiplier(cfg, s, progress(cfg, s, 0, 0.0)) for s in range(100)]
    assert lrs[0] == 0.0 and lrs[5] == 0.5 and lrs[10] == pytest.approx(0.9) and lrs[99] == pytest.approx(0.01)
    poly = TrainConfig(lr=1.0, max_steps=100, warmup_steps=0, warmup_ratio=0.1, decay="polynomial", power=2.0)
    assert lr_multiplier(poly, 5, progress(poly, 5, 0, 0.0)) == pytest.approx(0.5)
    assert lr_multiplier(poly, 50, progress(poly, 50, 0, 0.0)) == pytest.approx(0.25)
    const = TrainConfig(max_steps=0, max_tokens=1000, warmup_ratio=0.0, decay="constant")
    assert lr_multiplier(const, 7, progress(const, 7, 900, 0.0)) == 1.0
    both = TrainConfig(max_steps=100, max_tokens=1000, warmup_ratio=0.0)
    assert progress(both, 10, 500, 0.0) == 0.5  # the budget used furthest decides


def test_train_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lr: 3.0e-4\noptimizer: lamb\nbetas: [0.9, 0.98]\nmax_steps: 50\n")
    cfg = TrainConfig.load(path)
    assert (cfg.lr, cfg.optimizer, cfg.betas, cfg.max_steps) == (3e-4, "lamb", (0.9, 0.98), 50)
    cfg = cfg.with_overrides(["betas=0.9,0.999", "compile=true", "grad_accum=4", "precision=bf16"])
    assert cfg.betas == (0.9, 0.999) and cfg.compile is True and cfg.grad_accum == 4
    with pytest.raises(BertforgeError, match=r"unknown key 'learning_rate'; valid keys: betas, clip_norm"):
        cfg.with_overrides(["learning_rate=1"])
    with pytest.raises(BertforgeError, match="optimizer='sgd' is not one of 'adamw', 'lamb'"):
        cfg.with_overrides(["optimizer=sgd"])
    with pytest.raises(BertforgeError, match="grad_accum='two' is not a valid int"):
        cfg.with_overrides(["grad_accum=two"])
    with pytest.raises(BertforgeError, match="set a budget"):
        cfg.with_overrides(["max_steps=0"])
    path.write_text("lr: [1\n")
    with pytest.raises(BertforgeError, match=r"train.yaml: line 2 not valid YAML"):
        TrainConfig.load(path)


def test_bf16_autocast_on_cpu_and_fp16_refused(tmp_path):
    result = make_trainer(tmp_path / "bf16", tiny_config(max_steps=4, precision="bf16")).train()
    assert result.step == 4 and math.isfinite(records(tmp_path / "bf16", "train")[-1]["loss"])
    with pytest.raises(BertforgeError, match="fp16 needs a CUDA device; use precision=bf16"):
        make_trainer(tmp_path / "fp16", tiny_config(precision="fp16"), device="cpu")


def test_lamb_trains(tmp_path):
    result = make_trainer(tmp_path, tiny_config(max_steps=30, optimizer="lamb", lr=2e-2, log_every=10)).train()
    losses = [r["loss"] for r in records(tmp_path, "train")]
    assert result.step == 30 and losses[-1] < losses[0]


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, tiny_config(), stream=ToyStream(poison_at=5))  # the 6th batch is NaN
    with pytest.raises(BertforgeError, match=r"step 6: the training loss is nan; stopped before updating the "
                                             r"weights, the last good checkpoint is .*step-00000004"):
        trainer.train()
    from bertforge.train.checkpoint import verify_checkpoint

    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000004"]
    assert verify_checkpoint(tmp_path / "checkpoints" / "step-00000004") is None
    assert all(torch.isfinite(p).all() for p in trainer.objective.parameters())
    assert records(tmp_path, "event")[-1]["reason"] == "nonfinite"


def test_unwritable_run_dir_and_low_disk_are_caught_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BertforgeError, match=r"run directory .*file/run is not writable"):
        make_trainer(blocker / "run")

    class Usage:
        free = 10_000

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(BertforgeError, match=r"only 0.00 GB free, but checkpoints of about .* need"):
        make_trainer(tmp_path / "small")


def test_a_model_directory_or_corpus_store_is_not_taken_as_a_run_directory(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(BertforgeError, match="is not a training run"):
        make_trainer(model).train()
    assert (model / "config.json").read_text() == '{"model_type": "bert"}'  # untouched
    store = tmp_path / "x.store"
    store.mkdir()
    (store / "manifest.json").write_text("{}")
    with pytest.raises(BertforgeError, match="is a corpus store"):
        make_trainer(store).train()


def test_existing_checkpoints_need_resume_and_resume_needs_a_checkpoint(tmp_path):
    make_trainer(tmp_path, tiny_config(max_steps=4)).train()
    with pytest.raises(BertforgeError, match="already holds checkpoints .*--resume"):
        make_trainer(tmp_path)
    with pytest.raises(BertforgeError, match="no checkpoint to resume from"):
        make_trainer(tmp_path / "empty", resume=True)


def test_a_stream_sharded_for_another_world_size_is_refused(tmp_path):
    with pytest.raises(BertforgeError, match="stream was built for world_size=2, but 1 processes are training"):
        make_trainer(tmp_path, stream=ToyStream(rank=1, world_size=2))


@pytest.mark.slow
def test_sigint_writes_a_final_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(script_command(run, "--delay", "0.05", "--set", "max_steps=400", "--set", "log_every=1",
                                           "--set", "save_every_steps=1000"),
                            env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(run, 5, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["stopped_by"] == "interrupted" and 5 <= result["step"] < 400
    from bertforge.train.checkpoint import list_checkpoints, verify_checkpoint

    (ckpt,) = list_checkpoints(run / "checkpoints")
    assert ckpt.name == f"step-{result['step']:08d}" and verify_checkpoint(ckpt) is None
    assert "continue with --resume" in err and (run / "report.md").is_file()


@pytest.mark.slow
def test_compile(tmp_path, monkeypatch):
    """The trainer runs the objective through torch.compile and checkpoints the uncompiled names. Dynamo's
    "eager" backend keeps this fast: inductor's C++ build takes minutes on two shared cores, and the
    tracing of the objective (what could break here) is the same."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend="eager"))
    trainer = make_trainer(tmp_path, tiny_config(max_steps=3, compile=True, save_every_steps=0))
    assert trainer.forward is not trainer.model
    assert trainer.train().step == 3
    assert not any(k.startswith("_orig_mod") for k in final_weights(tmp_path))


if __name__ == "__main__":
    sys.exit(main())
