"""`torchrun --nproc_per_node 2 -m bertforge pretrain` (gloo) reaches the weights of one process over the same
global batch, and resumes distributed, on a small real corpus store with the bert recipe (static masks + NSP).

What "the same global batch" means: the pretraining stream yields global micro-batches of batch_size
sequences and each process keeps its contiguous half of the rows; every objective's loss is a mean over
its own process's tokens and DDP averages the gradients. So 2 processes x batch 8 take the step that one
process takes with the same 8 sequences as two micro-batches of 4 (grad_accum=2): the mean of two
half-batch means, not the mean over all 8 rows' masked tokens (rows hold different numbers of them).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bertforge.cli import main
from test_pretrain import stores  # noqa: F401  (session fixture: small real corpus stores)
from test_pretrain_resume import last_checkpoint_weights, one_thread  # noqa: F401
from test_train import records, script_env

# No dropout (the processes' dropout masks could not match one process's), and warmup then a constant
# lr, so that the schedule does not depend on max_steps and the DDP run can be extended on resume.
SETTINGS = ["hidden_size=32", "intermediate_size=64", "num_heads=2", "max_len=64", "hidden_dropout=0",
            "attention_dropout=0", "warmup_steps=2", "decay=constant", "lr=1e-3", "log_every=1",
            "eval_every=4", "eval_batches=1", "save_every_steps=4"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "bertforge", "pretrain", "--no-progress", *args]
    return subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_and_resume(stores, tmp_path):  # noqa: F811
    data = ["--recipe", "bert", "--corpus", str(stores("wordpiece")), "--tokenizer", str(stores.root / "tok-wordpiece")]
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    assert main(["pretrain", "--no-progress", *data, "--out", str(one), "--set", *SETTINGS, "batch_size=4",
                 "grad_accum=2", "max_steps=8"]) == 0

    first = torchrun(*data, "--out", str(ddp), "--set", *SETTINGS, "batch_size=8", "max_steps=5")
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun("--resume", str(ddp), "--set", "max_steps=8")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stopped by max_steps at step 8" in second.stdout

    a, b = last_checkpoint_weights(one), last_checkpoint_weights(ddp)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)
    # Rank 0 alone logs: one record per step; the tokens summed over both processes are one process's.
    train = records(ddp, "train")
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [r["tokens"] for r in train] == [r["tokens"] for r in records(one, "train")]
    assert [r["step"] for r in records(ddp, "event") if r["event"] == "resume"] == [5]
