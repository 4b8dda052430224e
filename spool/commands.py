"""Commands both CLIs share because they need no home and no keys."""

from __future__ import annotations

from pathlib import Path

import click

from bundle.envelope import check_bundle
from spool.console import echo_json


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
