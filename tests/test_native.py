"""The C vocabulary-loss kernel (bertforge.native) against PyTorch: both of its builds (AVX-512 where this CPU
has it, and the portable C every other machine gets), the bf16 training path that uses it, and the loader's
fallbacks (no compiler, switched off) and cache."""

import os

import pytest
import torch
import torch.nn.functional as F

from bertforge import native
from bertforge.objectives import base
from bertforge.objectives.base import linear_cross_entropy

BUILDS = {"native": native.FLAGS, "portable": native.PORTABLE_FLAGS}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def lib(request):
    lib = native.library(BUILDS[request.param])
    if lib is None:
        pytest.skip(f"no C compiler here: {native.status()}")
    return lib


def logits_t(n, v=300, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    width = -(-n // native.COLUMN_ALIGN) * native.COLUMN_ALIGN
    lt = torch.zeros(v, width, dtype=torch.bfloat16)
    lt[:, :n] = (torch.randn(v, n, generator=g) * scale).bfloat16()
    bias = torch.randn(v, generator=g)
    return lt, bias, torch.randint(0, v, (n,), generator=g)


@pytest.mark.parametrize("n", [1, 31, 32, 33, 70])
@pytest.mark.parametrize("with_bias", [True, False])
def test_kernel_equals_pytorch_softmax_cross_entropy(lib, n, with_bias):
    lt, bias, targets = logits_t(n)
    bias = bias if with_bias else None
    x = lt[:, :n].t().float() + (0 if bias is None else bias)  # what the kernel reads: bf16 logits + bias
    grad = torch.softmax(x, 1) - F.one_hot(targets, x.shape[1])
    for threads in (1, 2, 3):  # one block of columns, or several run in parallel
        out = lt.clone()
        loss, top, target_logit, column = native.vocab_loss(out, n, bias, targets, lib, threads=threads)
        torch.testing.assert_close(loss, F.cross_entropy(x, targets, reduction="none"), rtol=1e-5, atol=2e-5)
        assert torch.equal(top, x.amax(1)) and torch.equal(target_logit, x[torch.arange(n), targets])
        torch.testing.assert_close(out[:, :n].t().float(), grad, rtol=2 ** -8, atol=1e-6)  # bf16 rounding
        assert not out[:, n:].any()  # padding columns: gradient 0
        torch.testing.assert_close(column, grad.sum(0), rtol=1e-5, atol=1e-5)


def test_a_target_far_below_the_maximum_keeps_an_exact_finite_loss(lib):
    lt, bias, targets = logits_t(5)
    bias[targets[2]] = -250.0  # its probability exp(-250) is 0 in float32: the loss comes from log space
    x = lt[:, :5].t().float() + bias
    loss, *_ = native.vocab_loss(lt.clone(), 5, bias, targets, lib)
    assert torch.isfinite(loss).all() and loss[2] > 200
    torch.testing.assert_close(loss, F.cross_entropy(x, targets, reduction="none"), rtol=1e-5, atol=2e-5)


def inputs(n=70, e=32, v=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, e, generator=g) * 0.3).requires_grad_()
    weight = torch.randn(v, e, generator=g).requires_grad_()
    bias = (torch.randn(v, generator=g) * 0.5).requires_grad_()
    return hidden, weight, bias, torch.randint(0, v, (n,), generator=g)


def bf16_loss_and_grads(hidden, weight, bias, targets, scale=1.0):
    for t in (hidden, weight, bias):
        t.grad = None
    with torch.autocast("cpu", torch.bfloat16):
        loss, accuracy = linear_cross_entropy(hidden, weight, bias, targets)
    (scale * loss).backward()
    return loss.detach(), accuracy, hidden.grad.clone(), weight.grad.clone(), bias.grad.clone()


@pytest.mark.parametrize("scale", [1.0, 3.5])  # an upstream gradient other than 1, as in a weighted objective
def test_bf16_training_path_matches_the_pytorch_path(monkeypatch, scale):
    if native.library() is None:
        pytest.skip(native.status())
    args = inputs()
    calls = []
    real = base._LinearCrossEntropyColumns.apply
    monkeypatch.setattr(base._LinearCrossEntropyColumns, "apply", lambda *a: calls.append(1) or real(*a))
    ours = bf16_loss_and_grads(*args, scale=scale)
    assert calls, "the bf16 path did not use the C kernel"
    monkeypatch.setattr(native, "library", lambda *a: None)
    theirs = bf16_loss_and_grads(*args, scale=scale)
    assert len(calls) == 1
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-3, atol=1e-3)
    assert ours[1] == theirs[1]
    for a, b in zip(ours[2:], theirs[2:]):
        assert a.dtype == b.dtype == torch.float32
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9999


def test_out_of_range_targets_fail_as_in_pytorch():
    hidden, weight, bias, targets = inputs()
    targets[3] = weight.shape[0]  # one past the vocabulary: the C kernel would read outside the logits
    with pytest.raises(IndexError), torch.autocast("cpu", torch.bfloat16):
        linear_cross_entropy(hidden, weight, bias, targets)


def test_switched_off_or_without_a_compiler_callers_fall_back(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_why_not", {})
    monkeypatch.setenv("BERTFORGE_NATIVE", "0")
    assert native.library() is None and "BERTFORGE_NATIVE=0" in native.status()
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.delenv("BERTFORGE_NATIVE")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert native.library() is None and "no-such-cc" in native.status()
    hidden, weight, bias, targets = inputs()
    bf16_loss_and_grads(hidden, weight, bias, targets)  # trains on the PyTorch path
    assert torch.isfinite(weight.grad).all()


def test_a_failed_compile_leaves_nothing_and_a_build_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTFORGE_NATIVE_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="failed"):
        native.build(("-O3", "--no-such-option", "-shared", "-fPIC"))
    assert not list(tmp_path.iterdir())  # no half-written library under any name
    try:
        native.build(native.PORTABLE_FLAGS)
    except RuntimeError as e:
        pytest.skip(str(e))
    (built,) = tmp_path.iterdir()
    stamp = built.stat().st_mtime_ns
    native.build(native.PORTABLE_FLAGS)
    assert [p.name for p in tmp_path.iterdir()] == [built.name] and built.stat().st_mtime_ns == stamp
    assert os.access(built, os.R_OK)


def test_kernel_draws_follow_the_softmax(lib):
    """ELECTRA's generator draws from the kernel's pass: a chi-square goodness-of-fit test (fixed seed) of
    60,000 draws from one column of logits, split over blocks and threads, against its softmax."""
    from scipy.stats import chisquare

    n, v = 60_000, 12
    g = torch.Generator().manual_seed(0)
    column = (torch.randn(v, 1, generator=g) * 2).bfloat16()
    bias = torch.randn(v, generator=g)
    lt = column.expand(v, n).contiguous()
    probs = torch.softmax(column[:, 0].double() + bias.double(), 0)
    uniform = torch.rand(n, generator=g)
    *_, draws = native.vocab_loss(lt, n, bias, torch.zeros(n, dtype=torch.int64), lib, threads=2, uniform=uniform)
    counts = torch.bincount(draws, minlength=v).double()
    assert draws.min() >= 0 and draws.max() < v
    assert chisquare(counts.numpy(), (probs * n).numpy()).pvalue > 0.01
    # the inverse CDF itself: each draw is the first entry whose cumulative probability exceeds its number
    cdf = probs.float().cumsum(0)
    torch.testing.assert_close(draws, torch.searchsorted(cdf, uniform, right=True).clamp(max=v - 1), atol=0, rtol=0)


def test_bf16_sampling_path_matches_the_pytorch_path(monkeypatch):
    if native.library() is None:
        pytest.skip(native.status())
    hidden, weight, bias, targets = inputs(n=500)

    def run():
        torch.manual_seed(1)
        with torch.autocast("cpu", torch.bfloat16):
            loss, accuracy, draws = base.linear_cross_entropy_and_sample(hidden, weight, bias, targets, 1.0)
        return loss.detach(), draws

    ours = run()
    monkeypatch.setattr(native, "library", lambda *a: None)
    theirs = run()
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-3, atol=1e-3)
    # the same uniform numbers and nearly the same probabilities (the two GEMM layouts round differently)
    assert (ours[1] == theirs[1]).float().mean() > 0.99


def test_int32_targets_take_the_kernel_path_like_int64():
    if native.library() is None:
        pytest.skip(native.status())
    hidden, weight, bias, targets = inputs()
    ours = bf16_loss_and_grads(hidden, weight, bias, targets.int())
    theirs = bf16_loss_and_grads(hidden, weight, bias, targets)
    for a, b in zip(ours, theirs):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_under_torch_compile_the_kernel_path_runs_uncompiled(monkeypatch):
    """Dynamo must not compile pieces of the kernel path between its ctypes calls: inductor's code for them
    failed once N changed (NameError on a size symbol, ELECTRA with compile=true). Checked on the graphs
    dynamo hands its backend, with N changing between calls, and against the uncompiled results."""
    if native.library() is None:
        pytest.skip(native.status())
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    calls = []
    real = base._LinearCrossEntropyColumns.apply
    monkeypatch.setattr(base._LinearCrossEntropyColumns, "apply", lambda *a: calls.append(1) or real(*a))
    hidden, weight, bias, targets = inputs(n=90)

    def step(h, t):
        with torch.autocast("cpu", torch.bfloat16):
            loss, _, draws = base.linear_cross_entropy_and_sample(h, weight, bias, t, 1.0)
        return loss, draws

    compiled = torch.compile(step, backend=backend)
    for n in (70, 90, 64):
        torch.manual_seed(n)
        loss, draws = compiled(hidden[:n], targets[:n])
        torch.manual_seed(n)
        want, want_draws = step(hidden[:n], targets[:n])
        assert torch.equal(loss, want) and torch.equal(draws, want_draws)
    torch._dynamo.reset()
    assert len(calls) == 6
    traced = [node.meta.get("stack_trace") or "" for gm in graphs for node in gm.graph.nodes]
    assert not [t for t in traced if "native" in t or "_LinearCrossEntropyColumns" in t]


def cc_script(tmp_path, body):
    """A fake compiler: answers --version, records every other invocation in calls.txt, then runs ``body``."""
    script = tmp_path / "fake-cc"
    script.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo fake 1.0; exit 0; }}\n'
                      f'echo "$@" >> {tmp_path / "calls.txt"}\n{body}\n')
    script.chmod(0o755)
    return script


def fresh_loader(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_why_not", {})
    monkeypatch.setenv("BERTFORGE_NATIVE_CACHE", str(tmp_path / "cache"))


def test_a_hung_compiler_costs_one_timeout_not_two(monkeypatch, tmp_path):
    fresh_loader(monkeypatch, tmp_path)
    monkeypatch.setenv("CC", str(cc_script(tmp_path, "exec sleep 60")))
    monkeypatch.setattr(native, "COMPILE_TIMEOUT", 1)
    assert native.library() is None and "timed out" in native.status()
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 1  # no second try with other flags
    assert not list((tmp_path / "cache").iterdir())


def test_a_compiler_refusing_march_native_is_retried_portable(monkeypatch, tmp_path):
    real = native._compiler()
    if real is None:
        pytest.skip("no C compiler")
    fresh_loader(monkeypatch, tmp_path)
    script = cc_script(tmp_path, f'case "$*" in *-march=native*) exit 1;; esac\nexec {real[0]} "$@"')
    monkeypatch.setenv("CC", str(script))
    lib = native.library()
    assert lib is not None and lib.bertforge_vocab_loss_flavour() == 0  # the portable build
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 2


def test_cc_with_arguments_is_split_as_a_shell_would(monkeypatch, tmp_path):
    real = native._compiler()
    if real is None:
        pytest.skip("no C compiler")
    fresh_loader(monkeypatch, tmp_path)
    monkeypatch.setenv("CC", f"{real[0]} -Wall")  # as in CC="ccache gcc" or CC="gcc -m64"
    assert native.library(native.PORTABLE_FLAGS) is not None, native._why_not


@pytest.mark.parametrize("damage", ["empty", "garbage", "cut short"])
def test_a_damaged_library_in_the_cache_is_rebuilt(monkeypatch, tmp_path, damage):
    """A library cut short under the final name (a crash before its data reached the disk, a partly copied
    cache) is mapped by dlopen without complaint and killed the process with SIGBUS on every run: loaded in
    a child process, which must build it again and work."""
    import subprocess
    import sys

    monkeypatch.setenv("BERTFORGE_NATIVE_CACHE", str(tmp_path))
    try:
        native.build(native.PORTABLE_FLAGS)
    except RuntimeError as e:
        pytest.skip(str(e))
    (built,) = tmp_path.iterdir()
    whole = built.read_bytes()
    # a new file under the name, not the old one rewritten: this process has the old one mapped (build loaded
    # it), and truncating a mapped library is what kills a process with SIGBUS (here pytest's, at exit)
    damaged = tmp_path / "damaged"
    damaged.write_bytes({"empty": b"", "garbage": b"not a library\n", "cut short": whole[: len(whole) // 2]}[damage])
    os.replace(damaged, built)
    code = "from bertforge import native; print(native.build(native.PORTABLE_FLAGS).bertforge_vocab_loss_flavour())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr[-500:]
    assert built.read_bytes() == whole and [p.name for p in tmp_path.iterdir()] == [built.name]


def test_threads_work_in_a_forked_child(lib):
    """The worker pool's threads do not survive a fork: the child must start its own, not wait forever on
    work queued to threads that do not exist in it."""
    import signal
    import time

    lt, bias, targets = logits_t(4096, v=50)
    want = native.vocab_loss(lt.clone(), 4096, bias, targets, lib, threads=2)[0]  # the parent's pool now exists
    pid = os.fork()
    if pid == 0:  # child: torch itself is safe after a fork on one thread (OpenMP's pool does not survive either)
        code = 1
        try:
            torch.set_num_threads(1)
            code = 0 if torch.equal(native.vocab_loss(lt.clone(), 4096, bias, targets, lib, threads=2)[0], want) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the kernel hung in a forked child")
    assert os.waitstatus_to_exitcode(done[1]) == 0
