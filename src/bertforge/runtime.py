"""Process-wide settings that make CPU training and inference faster; the CLI applies them at start.

``tune_allocator()``: glibc malloc serves every allocation above its mmap threshold (at most 32 MB) with a
fresh ``mmap`` and returns it with ``munmap`` on free, so each step of a training loop page-faults its big
tensors in again, one 4 KB page at a time: the [N, 30,522] MLM logits, the fp32 <-> bf16 copy of the tied
embedding matrix, its gradient. In a small bf16 pretraining step that was 15-30% of the time (1,075 ms ->
750-920 ms with the tuning across runs; docs/PERFORMANCE.md); a 15.6M-element fp32 -> bf16 cast took 25 ms
instead of 6.
Turning mmap off for malloc (M_MMAP_MAX = 0) and never trimming the heap (M_TRIM_THRESHOLD) keeps freed
memory in the process for the next step, the reason PyTorch's CPU tuning guides preload jemalloc or
tcmalloc; mallopt needs no extra library. The cost: the process keeps its peak heap size until it exits.
Set BERTFORGE_MALLOC=default to leave glibc's defaults alone.

``model_thread()``: one thread per process for every torch call of a long-lived service (loading the model
included). Each thread that starts OpenMP work gets its own team of worker threads, and once the process
holds more OpenMP threads than cores, GNU OpenMP (torch's) stops spinning between parallel regions and
puts its workers to sleep instead: every operator then pays a futex wake-up. Loading a model in the main
thread (weight init, casts) and running it in another made MiniLM's fp32 forward at 128 tokens 2-3x slower
(37-48 vs 65-125 ms; a 128 x 384 add 33 -> 90 us); transformers' loader runs no OpenMP work, so its models
escaped it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from concurrent.futures import ThreadPoolExecutor

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_tuned: bool | None = None
_model_thread: ThreadPoolExecutor | None = None
_model_thread_lock = threading.Lock()


def tune_allocator() -> bool:
    """Keep freed memory in the heap for reuse (glibc only; once per process). Returns whether it applied."""
    global _tuned
    if _tuned is None:
        _tuned = False
        if os.environ.get("BERTFORGE_MALLOC", "").lower() != "default" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
            except OSError:
                return False
            # mallopt returns 1 on success; the trim threshold is a C int: the largest one
            _tuned = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _tuned


def model_thread() -> ThreadPoolExecutor:
    """The process's single model thread (created at first use, never shut down): submit model loading and
    every forward to it, so that one OpenMP team does all the work (see the module doc)."""
    global _model_thread
    with _model_thread_lock:
        if _model_thread is None:
            _model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertforge-model")
        return _model_thread
