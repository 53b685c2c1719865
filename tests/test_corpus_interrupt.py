"""Interrupting `corpus build` in a real process: one or two Ctrl-C to the whole process group (a terminal,
`timeout -s INT`) or SIGTERM end it at once with one line, no temporary store and the old store intact."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertforge.data.corpus import build_corpus
from bertforge.data.tokenizer_train import train_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src"
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT to them are POSIX")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tokenizer, an old store at out.store, and a text big enough that building it takes a while."""
    root = tmp_path_factory.mktemp("interrupt")
    line = "The quick brown fox jumps over the lazy dog. A river runs by the city in the rain!"
    (root / "small.txt").write_text(f"{line}\n" * 50)
    train_tokenizer("wordpiece", [root / "small.txt"], 120, out=root / "tok", progress=False)
    build_corpus(root / "out.store", root / "tok", [root / "small.txt"], workers=0, progress=False)
    # Long lines: each chunk keeps a worker busy, so the signal finds workers mid-chunk with more queued.
    (root / "big.txt").write_text(((line + " ") * 4000 + "\n") * 100)
    return root


def files_of(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)], ids=["int-twice", "term"])
def test_signals_to_the_process_group_end_the_build_promptly(setup, signals):
    root = setup
    old = files_of(root / "out.store")
    cmd = [sys.executable, "-m", "bertforge", "corpus", "build", str(root / "big.txt"), "--tokenizer",
           str(root / "tok"), "--out", str(root / "out.store"), "--overwrite", "--workers", "2", "--quiet"]
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    p = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        # Wait until the workers have written tokens: they are running, with chunks queued behind them.
        deadline = time.monotonic() + 30
        while not any(f.stat().st_size for f in root.glob("out.store.tmp-*/tokens.bin")):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the build wrote no tokens in 30 s"
            time.sleep(0.05)
        for sig in signals:
            os.killpg(p.pid, sig)
            time.sleep(0.3)
        start = time.monotonic()
        out, err = p.communicate(timeout=10)
        assert time.monotonic() - start < 5
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130
    assert err.strip().splitlines() == ["bertforge: interrupted"], err
    assert not list(root.glob("out.store.*"))  # no temporary or moved-aside store
    assert files_of(root / "out.store") == old
