"""Measuring helpers shared by the benchmark scripts: peak RSS in a fresh child process.

Scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and
they import it as ``measure``.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def status_kb(name: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/self/status")


class Peak:
    """Peak RSS growth from now: exact with a VmHWM reset (Linux >= 4.0), else
    ru_maxrss, an upper bound."""

    def __init__(self) -> None:
        gc.collect()
        self.exact = self.reset()
        self.before_kb = status_kb("VmRSS") if self.exact else self._maxrss()

    @staticmethod
    def _maxrss() -> int:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    @staticmethod
    def reset() -> bool:
        """Restart the high-water mark at the current RSS (the baseline stays)."""
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    def peak_kb(self) -> int:
        return status_kb("VmHWM") if self.exact else self._maxrss()

    def extra_bytes(self) -> int:
        return (self.peak_kb() - self.before_kb) * 1024

    @property
    def method(self) -> str:
        return "VmHWM" if self.exact else "ru_maxrss"


def run_child(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --child SPEC`` in a fresh interpreter; its last stdout line is JSON."""
    done = subprocess.run(
        [sys.executable, str(Path(script).resolve()), "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}) for {spec}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


__all__ = ["Peak", "run_child", "status_kb"]
