"""``lltoken-agent``: the command line on an isolated agent machine.

Every command takes ``--home DIR`` (default ``$LLTOKEN_HOME``, else ``./agent``).  Commands
that sign or ingest open the keystore: the passphrase comes from ``--passphrase-file``,
else ``$LLTOKEN_PASSPHRASE``, else a prompt.  Commands that only read (``status``,
``wallet balance|history``, ``ledger verify|show``, ``config``) need no passphrase and work
while ``watch`` holds the home.  ``--json`` prints data for scripts.
"""

from __future__ import annotations

import os

# Offline guard: Flower reads these once, when it is first imported (below, through
# agent.home -> agent.flower_client), so they are set before any import that could.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from agent.home import (
    Agent,
    RosterOffer,
    TaskResult,
    Trust,
    load_config,
    load_public_key_file,
    parse_value,
    update_node_config,
)
from agent.ledger_replica import LedgerReplica
from bundle.checkpoint import checkpoint_to_json
from bundle.envelope import open_bundle_bytes
from bundle.errors import EquivocationError, FormatError, LLTokenError
from bundle.keys import PublicIdentity, read_passphrase
from bundle.ledger import Transfer, decode_entry
from bundle.payloads import Transaction
from spool.commands import check_command, make_doctor_command
from spool.console import echo_json, home_path, run
from spool.home import IngestReport
from spool.media import MediaWatcher
from spool.offline import enforce_offline
from spool.watcher import InboxWatcher, stop_on_signals

HOME_ENV = "LLTOKEN_HOME"
DEFAULT_HOME = "agent"

F = Callable[..., Any]


def home_option(f: F) -> F:
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=HOME_ENV,
        default=DEFAULT_HOME,
        show_default=True,
        callback=home_path,
        help=f"Agent home folder (default ${HOME_ENV}, else ./{DEFAULT_HOME}).",
    )(f)


def passphrase_option(f: F) -> F:
    return click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Read the keystore passphrase from this file (else $LLTOKEN_PASSPHRASE, else "
        "a prompt).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


def yes_option(f: F) -> F:
    return click.option(
        "--yes",
        "-y",
        is_flag=True,
        help="Trust the coordinator key of the first roster without asking (when none is "
        "pinned yet).",
    )(f)


def _open(home: Path, passphrase_file: Path | None) -> Agent:
    load_config(home)  # say "no agent home" before asking for a passphrase
    return Agent.open(home, read_passphrase(passphrase_file))


def _trust(yes: bool, as_json: bool) -> Trust:
    """Trust on first use: show the roster's coordinator fingerprint and ask."""

    def ask(offer: RosterOffer) -> bool:
        err = as_json  # keep stdout clean for JSON
        click.echo("No coordinator key is pinned yet. A roster offers this one:", err=err)
        click.echo(f"  federation:   {offer.roster.federation_name}", err=err)
        click.echo(f"  fingerprint:  {offer.coordinator.fingerprint}", err=err)
        click.echo(f"  key id:       {offer.coordinator.key_id.hex()}", err=err)
        click.echo(
            f"  roster:       version {offer.roster.version}, {len(offer.roster.members)} members",
            err=err,
        )
        click.echo(
            "Compare the fingerprint with the one the coordinator operator gave you.", err=err
        )
        if yes:
            click.echo("--yes: pinning it.", err=err)
            return True
        return click.confirm("Pin this coordinator key?", default=False, err=err)

    return ask


def _rejections_are_equivocation(rejected: list[dict[str, Any]]) -> bool:
    return any(r.get("error") == EquivocationError.__name__ for r in rejected)


def _warn_equivocation(rejected: list[dict[str, Any]]) -> None:
    if _rejections_are_equivocation(rejected):
        click.secho(
            "WARNING: the coordinator signed two conflicting ledger histories. The evidence "
            "is saved under ledger/evidence/ in this home; keep it and tell the other agents.",
            err=True,
            fg="red",
            bold=True,
        )


def _report_lines(report: IngestReport) -> list[str]:
    lines = [
        f"{len(report.accepted)} accepted, {len(report.rejected)} rejected, "
        f"{len(report.duplicates)} duplicates"
    ]
    lines += [f"rejected {r['file']}: {r.get('reason')}" for r in report.rejected]
    return lines


# ---------------------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lltoken-offline")
def cli() -> None:
    """Train on private data offline, carry bundles by stick, hold a token wallet."""


cli.add_command(check_command)
cli.add_command(make_doctor_command(home_option))


@cli.command()
@home_option
@passphrase_option
@click.option("--name", required=True, help="This agent's name (letters, digits, - _ .).")
@click.option(
    "--invite",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The invite file the coordinator operator gave you (pins the coordinator key).",
)
@click.option("--federation", help="The federation id (32 hex digits), without an invite.")
@click.option(
    "--coordinator-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The coordinator's identity.pub.json (with --federation). Without it, the first "
    "roster's key is pinned after you confirm its fingerprint.",
)
@click.option(
    "--node-config",
    "node_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="Flower node_config entry (repeatable), e.g. partition-id=3.",
)
@click.option("--app", help="Default ClientApp for train/evaluate, as module:attribute.")
@click.option("--fast-kdf", is_flag=True, hidden=True, help="Cheap Argon2id (tests only).")
@json_option
def init(
    home: Path,
    passphrase_file: Path | None,
    name: str,
    invite: Path | None,
    federation: str | None,
    coordinator_key: Path | None,
    node_config: tuple[str, ...],
    app: str | None,
    fast_kdf: bool,
    as_json: bool,
) -> None:
    """Create this agent's identity and write an enrollment request to the outbox."""
    if invite is not None and (federation is not None or coordinator_key is not None):
        raise click.UsageError("give --invite, or --federation [--coordinator-key], not both")
    if coordinator_key is not None and federation is None:
        raise click.UsageError("--coordinator-key needs --federation")
    if invite is None and federation is None:
        raise click.UsageError("give --invite FILE, or --federation HEX")
    invite_doc = None
    if invite is not None:
        try:
            invite_doc = json.loads(invite.read_text())
        except (OSError, ValueError) as e:
            raise FormatError(f"cannot read the invite ({e})", where=str(invite)) from e
    federation_id = None
    if federation is not None:
        try:
            federation_id = bytes.fromhex(federation)
        except ValueError as e:
            raise click.BadParameter("not hex", param_hint="--federation") from e
    values = {}
    for item in node_config:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--node-config")
        values[key] = parse_value(value)
    passphrase = read_passphrase(passphrase_file, confirm=True, prompt="New passphrase")
    agent = Agent.init(
        home,
        name,
        passphrase,
        invite=invite_doc,
        federation=federation_id,
        coordinator_key=None if coordinator_key is None else load_public_key_file(coordinator_key),
        node_config=values,
        app=app,
        fast_kdf=fast_kdf,
    )
    with agent:
        info = agent.status()
    if as_json:
        echo_json(info)
        return
    click.echo(f"agent {name!r} created in {home}")
    click.echo(f"  key id:       {info['key_id']}")
    click.echo(f"  fingerprint:  {info['fingerprint']}")
    click.echo("Read the fingerprint to the coordinator operator, who approves you with it.")
    if info["coordinator"] is None:
        click.echo(
            "No coordinator key pinned: the first roster that arrives will show its "
            "fingerprint and ask before it is trusted."
        )
    else:
        click.echo(f"  coordinator:  {info['coordinator']['fingerprint']} (pinned)")
    click.echo("The enrollment request is in the outbox: `lltoken-agent sync /media/STICK`.")


# ---------------------------------------------------------------------------- config


@cli.group()
def config() -> None:
    """Show or change this node's Flower node_config (e.g. partition-id)."""


@config.command("show")
@home_option
@json_option
def config_show(home: Path, as_json: bool) -> None:
    """Print the node_config entries."""
    values = load_config(home).node_config
    if as_json:
        echo_json(values)
        return
    if not values:
        click.echo("(node_config is empty)")
    for key, value in sorted(values.items()):
        click.echo(f"{key} = {value!r}")


@config.command("set")
@home_option
@click.argument("key")
@click.argument("value")
def config_set(home: Path, key: str, value: str) -> None:
    """Set KEY to VALUE (parsed as int/float/bool when it looks like one)."""
    parsed = parse_value(value)
    update_node_config(home, key, parsed)
    click.echo(f"{key} = {parsed!r}")


@config.command("unset")
@home_option
@click.argument("key")
def config_unset(home: Path, key: str) -> None:
    """Remove KEY from the node_config."""
    update_node_config(home, key, None)
    click.echo(f"{key} removed")


# ---------------------------------------------------------------------------- moving bundles


@cli.command()
@home_option
@passphrase_option
@click.argument("media", type=click.Path(exists=True, file_okay=False, path_type=Path))
@yes_option
@json_option
def sync(home: Path, passphrase_file: Path | None, media: Path, yes: bool, as_json: bool) -> None:
    """Exchange bundles with the stick mounted at MEDIA: take in ours, put out the outbox."""
    with _open(home, passphrase_file) as agent:
        summary = agent.sync(media, trust=_trust(yes, as_json), progress=not as_json)
    if as_json:
        echo_json(summary.to_dict())
    else:
        for line in summary.lines():
            click.echo(line)
    _warn_equivocation(summary.ingest.rejected)


@cli.command()
@home_option
@passphrase_option
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@yes_option
@json_option
def ingest(
    home: Path, passphrase_file: Path | None, paths: tuple[Path, ...], yes: bool, as_json: bool
) -> None:
    """Copy bundle files PATHS into the inbox and ingest them (no PATHS: the inbox)."""
    with _open(home, passphrase_file) as agent:
        targets = agent.import_files(list(paths)) if paths else None
        report = agent.ingest(targets, trust=_trust(yes, as_json))
    if as_json:
        echo_json(
            {
                "accepted": report.accepted,
                "rejected": report.rejected,
                "duplicates": report.duplicates,
            }
        )
    else:
        for line in _report_lines(report):
            click.echo(line)
    _warn_equivocation(report.rejected)


@cli.command()
@home_option
@passphrase_option
@click.option(
    "--media-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Where sticks are mounted (e.g. /media/$USER): sync each one as it appears.",
)
@yes_option
def watch(home: Path, passphrase_file: Path | None, media_root: Path | None, yes: bool) -> None:
    """Ingest bundles as they arrive in the inbox (and sync sticks) until Ctrl-C."""
    stop = threading.Event()
    stop_on_signals(stop)
    trust = _trust(yes, False)
    with _open(home, passphrase_file) as agent:
        spool = agent.spool
        if spool is None:  # a writer always has a spool
            raise LLTokenError("home opened without keys")

        def on_ready(paths: list[Path]) -> None:
            try:
                report = agent.ingest(paths, trust=trust)
            except LLTokenError as e:
                click.echo(f"error: {e}", err=True)
                return
            stamp = time.strftime("%H:%M:%S")
            for line in _report_lines(report):
                click.echo(f"{stamp} {line}")
            _warn_equivocation(report.rejected)

        def on_stick(stick: Path) -> None:
            click.echo(f"stick at {stick}: syncing")
            try:
                summary = agent.sync(stick, trust=trust)
            except LLTokenError as e:
                click.echo(f"error: {e}", err=True)
                return
            for line in summary.lines():
                click.echo(f"  {line}")
            _warn_equivocation(summary.ingest.rejected)

        media = MediaWatcher(media_root, on_stick) if media_root is not None else None

        def on_tick() -> None:
            if media is not None:
                media.poll()

        click.echo(
            f"watching {spool.dirs.inbox}"
            + (f" and sticks under {media_root}" if media_root else "")
            + "; Ctrl-C to stop"
        )
        InboxWatcher(spool.dirs.inbox, on_ready).run(stop, on_tick=on_tick)
    click.echo("stopped")


# ---------------------------------------------------------------------------- tasks


def _app_option(f: F) -> F:
    f = click.option(
        "--app-dir",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=".",
        show_default=True,
        help="Folder to import the app's module from.",
    )(f)
    return click.option(
        "--app",
        help="The Flower ClientApp as module:attribute (default: agent.json's app, else "
        "the example app agent.example_app:app).",
    )(f)


def _print_result(result: TaskResult, as_json: bool) -> None:
    if as_json:
        echo_json(result.to_dict())
        return
    what = "model update" if result.task_type == "train" else "evaluation result"
    click.echo(f"round {result.round}: {what} written to the outbox (encrypted to the coordinator)")
    click.echo(f"  bundle:       {result.path.name if result.path else result.bundle_id.hex()}")
    click.echo(f"  parent model: {result.model_hash.hex()}")
    click.echo(f"  examples:     {result.num_examples}")
    for key, value in sorted(result.metrics.items()):
        click.echo(f"  {key}: {value}")
    click.echo("Carry it to the coordinator: `lltoken-agent sync /media/STICK`.")


def _run_task(
    home: Path,
    passphrase_file: Path | None,
    app: str | None,
    app_dir: Path,
    task_type: str,
    as_json: bool,
) -> None:
    folder = str(app_dir.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    with _open(home, passphrase_file) as agent:
        result = agent.train(app) if task_type == "train" else agent.evaluate(app)
    _print_result(result, as_json)


@cli.command()
@home_option
@passphrase_option
@_app_option
@json_option
def train(
    home: Path, passphrase_file: Path | None, app: str | None, app_dir: Path, as_json: bool
) -> None:
    """Train the current round's global model with your Flower ClientApp."""
    _run_task(home, passphrase_file, app, app_dir, "train", as_json)


@cli.command()
@home_option
@passphrase_option
@_app_option
@json_option
def evaluate(
    home: Path, passphrase_file: Path | None, app: str | None, app_dir: Path, as_json: bool
) -> None:
    """Evaluate the global model of a pending evaluation task with your ClientApp."""
    _run_task(home, passphrase_file, app, app_dir, "evaluate", as_json)


# ---------------------------------------------------------------------------- wallet


@cli.group()
def wallet() -> None:
    """Token balance, history and transfers."""


@wallet.command("balance")
@home_option
@json_option
def wallet_balance(home: Path, as_json: bool) -> None:
    """Confirmed balance (from the verified ledger), pending outgoing and spendable."""
    with Agent.inspect(home) as agent:
        balance = agent.balance()
        pending = agent.pending_transfers()
    if as_json:
        echo_json({**balance.to_dict(), "pending": [t.to_dict() for t in pending]})
        return
    click.echo(f"confirmed:   {balance.confirmed}  (ledger size {balance.ledger_size})")
    click.echo(f"pending out: {balance.pending_out}")
    if balance.unreplicated_out:
        click.echo(f"confirmed, ledger not yet here: {balance.unreplicated_out}")
    click.echo(f"spendable:   {balance.spendable}")
    for t in pending:
        click.echo(
            f"  pending: {t.amount} to {t.recipient.hex()[:16]} (expires round "
            f"{t.expires_round}) {t.memo}"
        )


@wallet.command("history")
@home_option
@json_option
def wallet_history(home: Path, as_json: bool) -> None:
    """Every ledger entry that concerned this agent, and transfers not in the ledger."""
    with Agent.inspect(home) as agent:
        names = {m.identity.key_id: m.name for m in agent.roster()}
        lines = agent.history()
    if as_json:
        echo_json([line.to_dict() for line in lines])
        return
    if not lines:
        click.echo("(no history yet)")
    for line in lines:
        index = "-" if line.index is None else str(line.index)
        parts = [f"{index:>6}", f"{line.kind:<11}", f"{line.amount:>+8}", f"{line.status:<9}"]
        if line.round is not None:
            parts.append(f"round {line.round}")
        if line.counterparty is not None:
            other = names.get(line.counterparty, line.counterparty.hex()[:16])
            parts.append(("to " if line.amount < 0 else "from ") + other)
        parts += [x for x in (line.memo, line.reason) if x]
        click.echo("  ".join(parts))


@wallet.command("send")
@home_option
@passphrase_option
@click.option("--to", "to", required=True, help="Recipient: roster name, key id or fingerprint.")
@click.option("--amount", type=click.IntRange(min=1), required=True, help="Whole tokens.")
@click.option("--memo", default="", help="A note for the recipient (max 256 characters).")
@json_option
def wallet_send(
    home: Path, passphrase_file: Path | None, to: str, amount: int, memo: str, as_json: bool
) -> None:
    """Sign a transfer; it is pending until the coordinator's receipt or ledger confirms it."""
    with _open(home, passphrase_file) as agent:
        record = agent.send(to, amount, memo)
        balance = agent.balance()
    if as_json:
        echo_json({**record.to_dict(), "balance": balance.to_dict()})
        return
    click.echo(
        f"transfer of {amount} to {to} signed and put in the outbox (expires after round "
        f"{record.expires_round}); pending until confirmed"
    )
    click.echo(f"spendable now: {balance.spendable}")


# ---------------------------------------------------------------------------- ledger


@cli.group()
def ledger() -> None:
    """The verified copy of the token ledger."""


@ledger.command("verify")
@home_option
@json_option
def ledger_verify(home: Path, as_json: bool) -> None:
    """Re-check every entry from the files against the last signed checkpoint."""
    with Agent.inspect(home) as agent:
        if agent.replica is None:
            raise LLTokenError("no coordinator pinned yet: there is no ledger to verify")
        report = agent.replica.verify()
        coordinator = agent.replica.coordinator
    if as_json:
        echo_json(report.to_json())
        return
    click.echo(
        f"ok: {report.size} entries hash to root {report.root.hex()[:16]}..., signed by "
        f"{coordinator.fingerprint}; total supply {report.total_supply}"
    )


@ledger.command("show")
@home_option
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True)
@json_option
def ledger_show(home: Path, limit: int, as_json: bool) -> None:
    """The checkpoint, accounts on the roster, and the latest entries."""
    with Agent.inspect(home) as agent:
        replica = agent.replica
        if replica is None:
            raise LLTokenError("no coordinator pinned yet: there is no ledger")
        checkpoint = replica.checkpoint
        accounts = []
        for member in agent.roster():
            account = replica.account(member.identity.key_id)
            if account is not None:
                accounts.append(account.to_json())
        start = max(0, replica.size - limit)
        entries = []
        for offset, data in enumerate(replica.entries(start)):
            entry = decode_entry(data, f"ledger entry {start + offset}")
            fields = {k: v for k, v in entry.fields().items() if k not in ("bundle", "identity")}
            if isinstance(entry, Transfer):
                fields.update(_transfer_fields(replica, entry))
            entries.append({"index": start + offset, "kind": entry.KIND, **fields})
        total = replica.total_supply
    doc = {
        "size": 0 if checkpoint is None else checkpoint.size,
        "checkpoint": None if checkpoint is None else checkpoint_to_json(checkpoint),
        "total_supply": total,
        "accounts": accounts,
        "entries": entries,
    }
    if as_json:
        echo_json(doc)
        return
    if checkpoint is None:
        click.echo("no ledger delta received yet")
        return
    click.echo(
        f"ledger: {checkpoint.size} entries, root {checkpoint.root.hex()[:16]}..., "
        f"checkpoint time {time.strftime('%Y-%m-%d %H:%M', time.gmtime(checkpoint.time))} UTC"
    )
    click.echo(f"total supply: {total}")
    for a in accounts:
        state = "active" if a["active"] else "revoked"
        click.echo(f"  {a['name']:<20} {a['balance']:>10}  {state}")
    for e in entries:
        rest = {k: v for k, v in e.items() if k not in ("index", "kind")}
        shown = ", ".join(
            f"{k}={v.hex()[:16] if isinstance(v, bytes) else v}"
            for k, v in rest.items()
            if not isinstance(v, dict | list)
        )
        click.echo(f"{e['index']:>6}  {e['kind']:<11} {shown}")


def _transfer_fields(replica: LedgerReplica, entry: Transfer) -> dict[str, Any]:
    """Sender, recipient and amount of a transfer entry the replica already verified."""

    def keyring(key_id: bytes) -> PublicIdentity | None:
        account = replica.account(key_id)
        return None if account is None else account.identity

    tx = open_bundle_bytes(entry.bundle, keyring, where="transfer entry").payload
    if not isinstance(tx, Transaction):
        return {}
    return {"sender": tx.sender, "recipient": tx.recipient, "amount": tx.amount, "memo": tx.memo}


# ---------------------------------------------------------------------------- status, doctor


@cli.command()
@home_option
@json_option
def status(home: Path, as_json: bool) -> None:
    """Identity, pinned coordinator, round, tasks, balance and ledger checkpoint."""
    with Agent.inspect(home) as agent:
        info = agent.status()
    if as_json:
        echo_json(info)
        return
    coordinator = info["coordinator"]
    balance = info["balance"]
    checkpoint = info["checkpoint"]
    rows = [
        ("agent", f"{info['name']} ({info['enrollment']})"),
        ("fingerprint", info["fingerprint"]),
        ("key id", info["key_id"]),
        ("federation", f"{info['federation_name'] or '?'} {info['federation_id']}"),
        (
            "coordinator",
            "NOT PINNED (first roster will ask)"
            if coordinator is None
            else f"{coordinator['fingerprint']} (pinned)",
        ),
        ("current round", str(info["current_round"])),
        (
            "pending tasks",
            ", ".join(
                f"round {t['round']} {t['task_type']}"
                + ("" if t["model_present"] else " (global model not here yet)")
                for t in info["tasks"]
            )
            or "none",
        ),
        (
            "last update",
            "none"
            if info["last_update"] is None
            else f"round {info['last_update']['round']}: {info['last_update']['status']}"
            + (f" ({info['last_update']['reason']})" if info["last_update"]["reason"] else ""),
        ),
        (
            "balance",
            f"{balance['confirmed']} confirmed, {balance['pending_out']} pending out, "
            f"{balance['spendable']} spendable",
        ),
        (
            "last checkpoint",
            "none yet"
            if checkpoint is None
            else f"size {checkpoint['size']}, root {checkpoint['root'][:16]}..., "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(checkpoint['time']))} UTC",
        ),
        (
            "spool",
            f"{info['outbox']} in outbox, {info['inbox']} in inbox, "
            f"{info['quarantine']} quarantined",
        ),
    ]
    if info["node_config"]:
        rows.append(
            ("node_config", ", ".join(f"{k}={v}" for k, v in sorted(info["node_config"].items())))
        )
    if info["equivocation_evidence"]:
        rows.append(("EQUIVOCATION", ", ".join(info["equivocation_evidence"])))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def main() -> None:
    enforce_offline()
    run(cli, "lltoken-agent")
