"""``doctor``: check that a machine is fit to run a home offline.

Checks: the offline guard is on; no non-loopback network interface is up; the keystore
is private (mode 0600); installed dependency versions match the lock the tests ran with;
there is free disk space; Flower's telemetry and update check are off.  Each check says
ok, warn or fail, and what to do.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from spool.offline import FLOWER_SWITCHES, OFFLINE_FLAG, offline_enforced

LOCK_FILE = Path(__file__).with_name("dependencies.lock")
MIN_FREE_BYTES = 1 << 30


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn, fail
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


def _interfaces_up(sys_net: Path = Path("/sys/class/net")) -> list[str]:
    up: list[str] = []
    if not sys_net.is_dir():
        return up
    for iface in sorted(sys_net.iterdir()):
        if iface.name == "lo":
            continue
        try:
            state = (iface / "operstate").read_text().strip()
            flags = int((iface / "flags").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        if state == "up" or (state == "unknown" and flags & 0x1):
            up.append(iface.name)
    return up


def _locked_versions() -> dict[str, str]:
    versions = {}
    if LOCK_FILE.exists():
        for line in LOCK_FILE.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                versions[name.strip().lower()] = version.strip()
    return versions


def run_checks(home: Path) -> list[Check]:
    """All checks for the home at ``home`` (which may not exist yet)."""
    checks = []
    checks.append(
        Check(
            "offline mode",
            "ok" if offline_enforced() and os.environ.get(OFFLINE_FLAG) == "1" else "fail",
            "internet sockets are blocked in this process"
            if offline_enforced()
            else "the offline guard is not active; run through the lltoken CLIs",
        )
    )
    up = _interfaces_up()
    checks.append(
        Check(
            "network interfaces",
            "warn" if up else "ok",
            f"non-loopback interfaces up: {', '.join(up)}; an air-gapped machine should have none"
            if up
            else "only loopback is up",
        )
    )
    keystore = home / "keystore.json"
    if keystore.exists():
        mode = keystore.stat().st_mode & 0o777
        checks.append(
            Check(
                "key file permissions",
                "ok" if mode == 0o600 else "fail",
                f"{keystore} is {mode:o}"
                + ("" if mode == 0o600 else f"; run chmod 600 {keystore}"),
            )
        )
    else:
        checks.append(Check("key file permissions", "warn", f"no keystore at {keystore}"))
    locked = _locked_versions()
    drift = []
    for name, version in sorted(locked.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            drift.append(f"{name} missing (lock {version})")
            continue
        if installed != version:
            drift.append(f"{name} {installed} (lock {version})")
    checks.append(
        Check(
            "dependency versions",
            "fail" if not locked else ("warn" if drift else "ok"),
            "no lock file shipped"
            if not locked
            else ("; ".join(drift) if drift else f"{len(locked)} pinned packages match the lock"),
        )
    )
    target = home if home.exists() else home.parent if home.parent.exists() else Path.cwd()
    free = shutil.disk_usage(target).free
    checks.append(
        Check(
            "free disk space",
            "ok" if free >= MIN_FREE_BYTES else "warn",
            f"{free / (1 << 30):.1f} GiB free at {target}",
        )
    )
    wrong = {k: os.environ.get(k) for k, v in FLOWER_SWITCHES.items() if os.environ.get(k) != v}
    telemetry_module = sys.modules.get("flwr.supercore.telemetry")
    if (
        telemetry_module is not None
        and getattr(telemetry_module, "FLWR_TELEMETRY_ENABLED", "0") != "0"
    ):
        wrong["flwr telemetry (as imported)"] = "on"
    checks.append(
        Check(
            "Flower telemetry and update check",
            "fail" if wrong else "ok",
            f"not disabled: {wrong}"
            if wrong
            else "FLWR_TELEMETRY_ENABLED=0, FLWR_DISABLE_UPDATE_CHECK=1",
        )
    )
    return checks


__all__ = ["Check", "run_checks"]
