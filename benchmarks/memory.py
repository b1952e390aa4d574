"""Resident memory of this process from /proc (Linux): now, the high-water mark, and its reset.

``getrusage``'s ``ru_maxrss`` cannot serve a benchmark child: Linux keeps it across ``execve``, so a child
started by a process that grew large reports its parent's peak. ``VmHWM`` can be reset (``clear_refs``).
"""

from __future__ import annotations

from pathlib import Path


def process_rss_mb(field: str, pid: int | None = None) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) in MB from /proc, of this process or of ``pid``; None where /proc is
    absent or the process has ended."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the resident-memory high-water mark (Linux >= 4.0); False where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
