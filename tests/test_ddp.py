"""DistributedDataParallel through torchrun: 2 CPU processes (gloo) reach the weights of 1 process."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from bertforge.train.checkpoint import list_checkpoints, verify_checkpoint
from test_train import HERE, assert_same_weights, final_weights, main, one_thread, records, script_env  # noqa: F401

# Same global batch of 4 sequences (each rank gets 2), no dropout, the same number of predicted tokens in
# every row (so the per-token mean loss of the whole batch is the mean of the two halves' means), and a
# schedule that does not depend on max_steps (warmup then constant) so a run can be extended on resume.
ARGS = ["--fixed", "--batch", "4", "--dropout", "0", "--set", "warmup_steps=2", "--set", "decay=constant",
        "--set", "save_every_steps=3", "--set", "eval_every=3", "--set", "log_every=1"]


def torchrun(run_dir, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE), str(run_dir), *args]
    return subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_and_resume_distributed(tmp_path):
    assert main([str(tmp_path / "one"), *ARGS, "--set", "max_steps=8"]) == 0  # one process: this one

    first = torchrun(tmp_path / "ddp", *ARGS, "--set", "max_steps=5")
    assert first.returncode == 0, first.stderr[-3000:]
    # The resumed run reads a stream that shards by rank itself (as data.collate.PretrainingStream does)
    # instead of global batches the trainer slices: the same rows per rank, the same data position.
    second = torchrun(tmp_path / "ddp", *ARGS, "--set", "max_steps=8", "--resume", "--presharded")
    assert second.returncode == 0, second.stderr[-3000:]
    # both ranks print one JSON object to the same pipe; their lines may interleave, so find the objects
    results = [json.loads(m) for m in re.findall(r"\{[^{}]*\}", second.stdout)]
    assert [r["step"] for r in results] == [8, 8]

    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "ddp"), atol=1e-6)
    # Rank 0 alone writes: one metrics line per step, complete checkpoints that know the world size.
    train = records(tmp_path / "ddp", "train")
    assert [r["step"] for r in train] == list(range(1, 9))
    # Each rank read its half: the tokens summed over both equal the single process's count.
    assert [r["tokens"] for r in train] == [r["tokens"] for r in records(tmp_path / "one", "train")]
    evals = {r["step"]: r["loss"] for r in records(tmp_path / "ddp", "eval")}
    one_evals = {r["step"]: r["loss"] for r in records(tmp_path / "one", "eval")}
    assert (sorted(evals), sorted(one_evals)) == ([3, 5, 6, 8], [3, 6, 8])  # 5: the end of the first run
    assert all(abs(evals[s] - one_evals[s]) < 1e-5 for s in one_evals)
    for path in list_checkpoints(tmp_path / "ddp" / "checkpoints"):
        assert verify_checkpoint(path) is None
        assert json.loads((path / "manifest.json").read_text())["world_size"] == 2
    assert not list((tmp_path / "ddp" / "checkpoints").glob(".tmp-*"))
