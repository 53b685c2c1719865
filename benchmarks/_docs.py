"""Benchmarks write their results into marked sections of pages in docs/: one helper for all of them."""

from __future__ import annotations

import os
import re
from pathlib import Path


def write_marked(path: Path, start: str, end: str, body: str, default: str = "") -> None:
    """Replace the text between the ``start`` and ``end`` marker lines of ``path`` by ``body`` (appending the
    marked block when the page has none), written under a temporary name and renamed."""
    doc = path.read_text() if path.is_file() else default
    block = f"{start}\n{body.strip()}\n{end}"
    if start in doc and end in doc:
        doc = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda m: block, doc, flags=re.S)
    elif start in doc:  # a bare placeholder marker
        doc = doc.replace(start, block)
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc)
    os.replace(tmp, path)
