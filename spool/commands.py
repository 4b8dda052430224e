"""Commands both CLIs share because they need no keys: ``check`` and ``doctor``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bundle.envelope import check_bundle
from spool.console import echo_json
from spool.doctor import run_checks


@click.command("check")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check_command(files: tuple[Path, ...], as_json: bool) -> None:
    """Check bundle FILES without keys: name, structure and payload hash.

    Exits non-zero at the first bad file, naming what failed.
    """
    results = []
    for path in files:
        prefix = check_bundle(path)
        header = prefix.header
        results.append(
            {
                "file": str(path),
                "ok": True,
                "kind": header.kind,
                "sender": header.sender,
                "round": header.round,
                "encrypted": header.payload.encryption is not None,
                "payload_bytes": header.payload.size,
            }
        )
        if not as_json:
            click.echo(
                f"ok  {path.name}  {header.kind} round {header.round} "
                f"from {header.sender.hex()[:16]} ({header.payload.size} payload bytes)"
            )
    if as_json:
        echo_json(results)


def make_doctor_command(home_option: Callable[[Any], Any]) -> click.Command:
    """``doctor`` with the calling CLI's own ``--home`` option."""

    @click.command("doctor")
    @home_option
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def doctor(home: Path, as_json: bool) -> None:
        """Check this machine is fit to run offline: offline guard, network interfaces,
        key file permissions, dependency versions, disk space, Flower telemetry (exit 1
        if a check fails)."""
        checks = run_checks(home)
        if as_json:
            echo_json([c.to_dict() for c in checks])
        else:
            for c in checks:
                click.echo(f"[{c.status:>4}] {c.name}: {c.detail}")
        if any(c.status == "fail" for c in checks):
            raise click.exceptions.Exit(1)

    return doctor
