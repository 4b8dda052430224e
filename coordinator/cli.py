"""``lltoken-coordinator``: the coordinator's command line."""

from __future__ import annotations

import click

from spool.commands import check_command
from spool.console import run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lltoken-offline")
def cli() -> None:
    """Run an LL TOKEN OFFLINE federation: enroll agents, run rounds, keep the ledger."""


cli.add_command(check_command)


def main() -> None:
    run(cli, "lltoken-coordinator")
