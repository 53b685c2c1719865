"""Checkpoints: atomic writes, checksums, fallback past a corrupted one, exact resume after SIGKILL."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from bertforge.errors import BertforgeError
from bertforge.train import CheckpointWarning
from bertforge.train import checkpoint as ck
from test_train import (
    assert_same_weights,
    final_weights,
    main,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    script_command,
    script_env,
    wait_for_step,
)


def test_model_state_stores_shared_tensors_once_and_skips_frozen_weights():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
            self.b.weight = self.a.weight  # tied, as ELECTRA's generator and discriminator embeddings
            self.teacher = nn.Linear(3, 3).requires_grad_(False)
            self.register_buffer("counts", torch.arange(3.0))

    m = Pair()
    assert sorted(ck.model_state(m)) == ["a.bias", "a.weight", "b.bias", "counts"]
    other = Pair()
    ck.load_model_state(other, {k: v.clone() for k, v in ck.model_state(m).items()}, "test")
    assert torch.equal(other.b.weight, m.a.weight) and other.b.weight is other.a.weight
    with pytest.raises(BertforgeError, match="does not match the model being trained"):
        ck.load_model_state(nn.Linear(3, 3), ck.model_state(m), "ckpt")


def test_rng_states_round_trip_with_an_objective_generator():
    owner = nn.Module()
    owner.sub = nn.Module()
    owner.sub.sampler = torch.Generator().manual_seed(5)
    gens = ck.find_generators(owner)
    assert list(gens) == ["sub.sampler"]
    ck.seed_everything(3)
    state = ck.rng_state(gens)

    def draw():
        return (random.random(), np.random.rand(), torch.rand(1).item(),
                torch.rand(1, generator=owner.sub.sampler).item())

    first = draw()
    ck.set_rng_state(state, gens)
    assert draw() == first


def test_numpy_values_in_the_data_state_round_trip(tmp_path):
    state = {"pos": np.int64(7), "order": np.arange(5, dtype=np.int32), "nested": [{"x": np.float32(0.5)}]}
    path = tmp_path / "s.pt"
    torch.save(ck.to_loadable(state), path)
    back = ck.from_loadable(torch.load(path, weights_only=True))
    assert back["pos"] == 7 and back["nested"][0]["x"] == 0.5
    assert back["order"].dtype == np.int32 and back["order"].tolist() == [0, 1, 2, 3, 4]


def test_verify_detects_damage_and_prune_keeps_the_newest(tmp_path):
    model, opt_state = nn.Linear(2, 2), {"state": {}, "param_groups": []}
    paths = [ck.write_checkpoint(tmp_path, s, model, opt_state, {"step": s}, {}) for s in (1, 2, 3, 4)]
    assert all(ck.verify_checkpoint(p) is None for p in paths)
    weights = paths[3] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert ck.verify_checkpoint(paths[3]) == "model.safetensors does not match its sha256 checksum"
    (paths[2] / "state.pt").write_bytes(b"short")
    assert "state.pt has 5 bytes" in ck.verify_checkpoint(paths[2])
    (paths[1] / "manifest.json").unlink()
    assert "no manifest.json" in ck.verify_checkpoint(paths[1])
    with pytest.warns(CheckpointWarning) as caught:
        assert ck.latest_checkpoint(tmp_path) == paths[0]
    assert [str(w.message).split("/")[-1].split(" ")[0] for w in caught] == [
        "step-00000004", "step-00000003", "step-00000002"]
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "step-00000004.corrupt"
    ck.prune_checkpoints(tmp_path, keep_last=1)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000001"]


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    make_trainer(tmp_path / "a").train()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000012")
    optimizer_file = tmp_path / "b" / "checkpoints" / "step-00000008" / "optimizer.pt"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:-10])  # torn write
    with pytest.warns(CheckpointWarning, match=r"step-00000008 is incomplete or corrupted: optimizer.pt has"):
        result = make_trainer(tmp_path / "b", resume=True).train()
    assert result.step == 12
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))


def test_a_crash_while_writing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    real = ck._write_synced
    writes = []

    def crash_on_second_optimizer_file(path, data):
        writes.append(path.name)
        if writes.count("optimizer.pt") == 2:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(ck, "_write_synced", crash_on_second_optimizer_file)
    with pytest.raises(BertforgeError, match=r"cannot write a checkpoint .*No space left on device.*intact"):
        make_trainer(tmp_path).train()
    assert [p.name for p in ck.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000004"]
    assert ck.verify_checkpoint(tmp_path / "checkpoints" / "step-00000004") is None
    monkeypatch.setattr(ck, "_write_synced", real)
    assert make_trainer(tmp_path, resume=True).train().step == 12
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


SCENARIOS = {
    "plain": [],
    "accumulation": ["--set", "grad_accum=3"],
    "sampling": ["--objective", "sampling"],
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, scenario):
    """40 steps uninterrupted vs. killed with SIGKILL at a random step (maybe mid-checkpoint) and resumed."""
    args = [*SCENARIOS[scenario], "--set", "max_steps=40", "--set", "save_every_steps=5", "--set", "log_every=1",
            "--set", "eval_every=7", "--set", "keep_last=2"]
    kill_at = random.randint(6, 34)
    victim = subprocess.Popen(script_command(tmp_path / "run", *args, "--delay", "0.02"), env=script_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reached = wait_for_step(tmp_path / "run", kill_at, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert reached < 40, "the run finished before it could be killed"
    resumed = subprocess.run(script_command(tmp_path / "run", *args, "--resume"), env=script_env(),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert main([str(tmp_path / "ref"), *args]) == 0  # the uninterrupted run, in this process
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(tmp_path / "run"))
    assert '"step": 40' in resumed.stdout, f"killed at step {reached}"
