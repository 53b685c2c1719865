"""Hand-written CPU kernels in C, compiled on first use with the machine's C compiler and loaded with ctypes.

Only for work no maintained library does on CPU: PyTorch has no fused softmax cross-entropy over a
vocabulary for logits laid out one column per token (see objectives.base). The source ships with the
package; the first process that needs it compiles it (under a second) with ``-O3 -march=native`` into a
per-user cache, keyed by the source, the compiler and the CPU, so a cache shared between machines never
hands one CPU another's instructions. Without a working compiler, on Windows, or with BERTFORGE_NATIVE=0,
``library()`` is None (and ``vocab_loss()`` returns None), so callers use their PyTorch path; ``status()``
says which and why.

No Python C-API and no torch headers: plain C functions on raw pointers, so the build needs nothing but
``cc``, and ctypes releases the GIL during each call, which lets Python threads run one call per core.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..files import atomic_path

_SOURCE = Path(__file__).with_name("vocab_loss.c")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC")
PORTABLE_FLAGS = ("-O3", "-fopenmp-simd", "-shared", "-fPIC")  # where the compiler has no -march=native
_lock = threading.Lock()
_loaded: dict[tuple[str, ...], ctypes.CDLL | None] = {}
_why_not: dict[tuple[str, ...], str] = {}
_pool: ThreadPoolExecutor | None = None


def cache_dir() -> Path:
    """Where built kernels live: $BERTFORGE_NATIVE_CACHE, else $XDG_CACHE_HOME/bertforge/native (~/.cache)."""
    if os.environ.get("BERTFORGE_NATIVE_CACHE"):
        return Path(os.environ["BERTFORGE_NATIVE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bertforge" / "native"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(lines))  # once each, not per core
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compiler() -> list[str] | None:
    """The compiler command: $CC split as a shell would (``ccache gcc``, ``gcc -m64``), else cc, gcc or clang."""
    cc = shlex.split(os.environ.get("CC", ""))
    if cc:
        return [shutil.which(cc[0]) or cc[0], *cc[1:]]
    found = next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)
    return [found] if found else None


class _FlagsRefused(RuntimeError):
    """The compiler ran and failed: perhaps it lacks one of the flags (-march=native), so other flags may do."""


COMPILE_TIMEOUT = 120  # seconds; the build takes under one, and a hung compiler must not stall training long


def _whole(path: Path) -> bool:
    """Whether an ELF library is as long as its headers say (anything else: True, dlopen judges it). A library
    cut short (a crash before its data reached the disk, a full disk while a cache was copied) passes dlopen,
    which maps it without reading it, and then kills the process with SIGBUS, on every run."""
    with open(path, "rb") as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
        if head[:4] != b"\x7fELF" or len(head) < 64:
            return head[:4] != b"\x7fELF"
        if head[4] != 2:  # 32-bit ELF: not checked
            return True
        end = "<" if head[5] == 1 else ">"
        phoff, shoff = struct.unpack_from(end + "QQ", head, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", head, 0x36)
        if shoff + shentsize * shnum > size or phoff + phentsize * phnum > size:
            return False
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    # each program header: p_offset and p_filesz, the bytes of the file a segment maps
    return all(sum(struct.unpack_from(end + "Q16xQ", table, k * phentsize + 8)) <= size for k in range(phnum))


def _compile(cc: list[str], flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # built under a temporary name beside the target, then renamed: a concurrent or interrupted build never
    # leaves a half-written library under the name the next process loads
    with atomic_path(target) as tmp:
        try:
            done = subprocess.run([*cc, *flags, str(_SOURCE), "-o", str(tmp), "-lm"], capture_output=True,
                                  text=True, timeout=COMPILE_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(f"compiling {_SOURCE.name} with {shlex.join(cc)} failed: {e}") from None
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise _FlagsRefused(f"{shlex.join(cc)} {' '.join(flags)} failed: {last}")
        with open(tmp, "rb") as f:  # on disk before it has the final name: a crash cannot leave it cut short
            os.fsync(f.fileno())


def build(flags: tuple[str, ...] = FLAGS) -> ctypes.CDLL:
    """Compile (or find in the cache) and load the kernels with ``flags``. Raises RuntimeError on failure
    (_FlagsRefused when the compiler ran and rejected the build)."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang; or set CC)")
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"cannot run the C compiler {shlex.join(cc)}: {e}") from None
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), shlex.join(cc), version, " ".join(flags),
                                    _cpu_signature(), sys.platform]).encode()).hexdigest()[:16]
    target = cache_dir() / f"vocab_loss-{key}.so"
    for attempt in range(2):
        built = not target.exists()
        if built:
            _compile(cc, flags, target)
        try:
            if _whole(target):
                lib = ctypes.CDLL(str(target))
                break
            problem = "file cut short"
        except OSError as e:
            problem = str(e)
        if built or attempt:
            raise RuntimeError(f"cannot load {target}: {problem}")
        # a damaged library in the cache (see _whole): build it again rather than fall back on every run
        target.unlink(missing_ok=True)
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.bertforge_vocab_loss.argtypes = [p, i, i, i, i, i, p, p, p, p, p, p, p, p]
    lib.bertforge_vocab_loss.restype = ctypes.c_int
    lib.bertforge_vocab_loss_flavour.restype = ctypes.c_int
    return lib


def library(flags: tuple[str, ...] = FLAGS) -> ctypes.CDLL | None:
    """The kernels built with ``flags`` (once per process), retrying without -march=native if the compiler
    refuses it; None when they cannot be built or are switched off (see ``status``)."""
    with _lock:
        if flags not in _loaded:
            lib = None
            if os.environ.get("BERTFORGE_NATIVE", "1") == "0":
                _why_not[flags] = "switched off by BERTFORGE_NATIVE=0"
            elif sys.platform == "win32":
                _why_not[flags] = "not built on Windows"
            else:
                try:
                    lib = build(flags)
                except _FlagsRefused as e:
                    _why_not[flags] = str(e)
                    if flags == FLAGS:
                        try:
                            lib = build(PORTABLE_FLAGS)
                        except (RuntimeError, OSError):
                            pass
                # not retried: a compiler that cannot run or hangs would only cost the wait again
                except (RuntimeError, OSError) as e:
                    _why_not[flags] = str(e)
            _loaded[flags] = lib
        return _loaded[flags]


def _forget_the_pool_in_a_forked_child() -> None:
    global _pool, _lock
    # the pool's threads do not exist in a child process: work submitted to it would wait forever; and a
    # lock another thread held at the fork would never be released
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_the_pool_in_a_forked_child)


def status() -> str:
    """One line: which kernels this process uses, or why none."""
    lib = library()
    if lib is None:
        return f"not used ({_why_not.get(FLAGS, 'unknown reason')}): PyTorch fallbacks"
    flavour = lib.bertforge_vocab_loss_flavour()
    return "vocabulary loss in C, " + ("AVX-512" if flavour == 512 else "portable (compiler-vectorized)")


MIN_COLUMNS_PER_THREAD = 1024
COLUMN_ALIGN = 32  # the caller pads the token columns to a multiple of this; each thread gets whole blocks


def vocab_loss(logits_t: torch.Tensor, n: int, bias: torch.Tensor | None, targets: torch.Tensor,
               lib: ctypes.CDLL | None = None, threads: int | None = None, uniform: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, ...] | None:
    """Softmax cross-entropy of ``n`` tokens, in place on ``logits_t`` [V, ld] (bfloat16, contiguous, ld a
    multiple of COLUMN_ALIGN, >= n; column c is token c's logits, columns from n on are padding): overwrites
    it with the gradient of the summed loss with respect to the logits (softmax - one-hot; padding columns
    0) and returns float32 (loss [n], row maximum [n], target logit [n], gradient of the bias [V]). ``bias``
    is float32 [V] or None, ``targets`` int64 [n] in [0, V). With ``uniform`` (float32 [n] in [0, 1)) also
    one draw per token from its softmax by inverting the CDF, as a fifth tensor (int64 [n]). None when the
    kernels are not available.
    Runs on ``threads`` threads, each on its own block of columns; by default on torch.get_num_threads(),
    but with at least MIN_COLUMNS_PER_THREAD columns each."""
    global _pool
    lib = lib or library()
    if lib is None:
        return None
    v, ld = logits_t.shape
    assert logits_t.dtype == torch.bfloat16 and logits_t.is_contiguous() and ld % COLUMN_ALIGN == 0 and n <= ld
    assert targets.dtype == torch.int64 and targets.is_contiguous() and targets.numel() == n
    assert bias is None or (bias.dtype == torch.float32 and bias.is_contiguous() and bias.numel() == v)
    blocks = ld // COLUMN_ALIGN
    # At least MIN_COLUMNS_PER_THREAD columns a thread: in a tiny-model bf16 step on 2 cores a second thread
    # made the step 1.12x slower at 32 sequences (N ~320), 1.01x at 128 (~1,280), 0.91x at 256 (~2,550)
    parts = max(1, min(threads, blocks) if threads else
                min(torch.get_num_threads(), blocks, -(-n // MIN_COLUMNS_PER_THREAD)))
    bounds = [blocks * k // parts * COLUMN_ALIGN for k in range(parts + 1)]
    assert uniform is None or (uniform.dtype == torch.float32 and uniform.is_contiguous() and uniform.numel() == n)
    loss, top, target_logit = (torch.empty(n) for _ in range(3))
    colsum = torch.zeros(parts, v)
    samples = None if uniform is None else torch.empty(n, dtype=torch.int64)

    def run(k: int) -> int:
        return lib.bertforge_vocab_loss(
            logits_t.data_ptr(), v, ld, bounds[k], bounds[k + 1], n, None if bias is None else bias.data_ptr(),
            targets.data_ptr(), loss.data_ptr(), top.data_ptr(), target_logit.data_ptr(), colsum[k].data_ptr(),
            None if uniform is None else uniform.data_ptr(), None if samples is None else samples.data_ptr())

    if parts == 1:
        codes = [run(0)]
    else:
        with _lock:
            if _pool is None or _pool._max_workers < parts - 1:
                if _pool is not None:  # too few threads: its idle ones end, work already queued still runs
                    _pool.shutdown(wait=False)
                _pool = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="bertforge-native")
            pool = _pool
        futures = [pool.submit(run, k) for k in range(1, parts)]
        codes = [run(0)] + [f.result() for f in futures]
    if any(codes):
        raise RuntimeError(f"bertforge_vocab_loss failed with codes {codes}")  # misuse or out of memory
    out = loss, top, target_logit, colsum.sum(0) if parts > 1 else colsum[0]
    return out if samples is None else (*out, samples)
