"""Writing a file so that an interrupted job never leaves a half-written file under the final name.

Each file bertforge writes whole (weights, configs, tokenizer files, reports, JSON summaries, plots, ONNX
graphs) goes to a temporary name in the same directory (so the rename cannot cross a file system) and is
renamed over the final name only when complete; on any error, Ctrl-C included, the temporary file is
removed and whatever stood under the final name is untouched. Corpus stores and training checkpoints are
whole directories, built under a temporary name and renamed the same way (data/corpus.py,
train/checkpoint.py, which also syncs each file to disk). The finished file gets
the permissions the user's umask gives a new file (0644 under the usual 022): ``tempfile.mkstemp`` and
safetensors' ``save_file`` create 0600 files, which left saved models unreadable to any other account on
the machine (a server running as its own user, a teammate).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import BertforgeError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write (by name: safetensors, matplotlib, onnx, numpy);
    on leaving the block without an error it is renamed to ``path``, otherwise deleted. The temporary name
    keeps ``path``'s suffix, for writers that infer the format from it (savefig) or append one (np.savez)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise BertforgeError(f"{path}: cannot write, the directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(3)}.tmp{path.suffix}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only be read by
    setting it, and another thread creating a file in between would get the temporary value)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's content; an unreadable or non-UTF-8 file is a one-line error naming file and line."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BertforgeError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BertforgeError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 (whatever the locale)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, **dumps: Any) -> Path:
    """``obj`` as indented JSON with a final newline; non-ASCII text (Chinese labels, file names) kept as is."""
    return write_text(path, json.dumps(obj, **{"indent": 2, "ensure_ascii": False, **dumps}) + "\n")
