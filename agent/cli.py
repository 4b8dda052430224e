"""``lltoken-agent``: the command line on an isolated agent machine."""

from __future__ import annotations

import click

from spool.commands import check_command
from spool.console import run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lltoken-offline")
def cli() -> None:
    """Train on private data offline, carry bundles by stick, hold a token wallet."""


cli.add_command(check_command)


def main() -> None:
    run(cli, "lltoken-agent")
