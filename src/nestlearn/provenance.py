"""Where a result came from: library version, commit, software and hardware (D25; data.md §8)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch

import nestlearn


def git_commit() -> str | None:
    """The commit of the nestlearn source tree, with ``+dirty`` if it has local changes; None outside git."""
    root = Path(nestlearn.__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def provenance() -> dict[str, object]:
    """Library version, commit, date (UTC), Python, torch, threads, platform and CPU count."""
    return {"nestlearn_version": nestlearn.__version__, "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
