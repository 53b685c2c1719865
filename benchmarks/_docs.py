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


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat; (0, 0) where there is none (not Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user/nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(start: tuple[int, int]) -> float | None:
    """Share of CPU time the hypervisor gave to other guests since ``start = cpu_ticks()`` (the "st" of
    top/vmstat). The load average cannot see it: a VM reads as idle while its host runs other machines'
    work on its cores, and then every timing is slower and noisier."""
    steal, total = cpu_ticks()
    if total - start[1] <= 0:
        return None
    return (steal - start[0]) / (total - start[1])


def machine_note(steal: float | None) -> str:
    """One sentence on the hypervisor's steal during a run, for a report."""
    if steal is None:
        return ""
    return (f" CPU steal (time the hypervisor ran other guests on these cores) during the run: {steal:.1%}"
            + (": absolute times are slower and noisier than on a quiet host; ratios within a round-robin hold."
               if steal > 0.03 else "."))
