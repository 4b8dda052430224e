"""Terminal plumbing shared by both CLIs: error exits and JSON output.

Commands stay thin (parse, call the library, print).  Only our own error family is
caught here, and turned into its message and exit code; anything else is a bug and
shows as a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from bundle.errors import LLTokenError


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    """Print ``value`` as JSON (bytes as hex) for scripts."""
    click.echo(json.dumps(_plain(value), indent=2, sort_keys=True))


def home_path(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """``--home`` callback: refuse a folder of Python source.  Run from a checkout, the
    default ``./agent`` or ``./coordinator`` would otherwise be the package itself."""
    if (value / "__init__.py").exists() or (value / "setup.cfg").exists():
        raise click.BadParameter(
            f"{value} holds Python source, not a home; pass --home with a folder of its own "
            "(or set $LLTOKEN_HOME)"
        )
    return value


def run(group: click.Group, prog_name: str) -> None:
    """Run a click group; our errors become ``error: ...`` and their exit code."""
    try:
        group.main(prog_name=prog_name, standalone_mode=False)
    except LLTokenError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


__all__ = ["echo_json", "home_path", "run"]
