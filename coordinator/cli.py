"""``lltoken-coordinator``: the coordinator's command line.

Commands are thin: parse options, call the library, print human text or ``--json``.
Every command that works on a home takes ``--home`` (default ``$LLTOKEN_HOME`` or
``./coordinator``).  Commands import the library inside their bodies so that ``--help``,
``check`` and ``ledger verify`` start without loading Flower (about a second here).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spool.offline import enforce_offline

enforce_offline()  # before anything below can import flwr

import click  # noqa: E402

from bundle.errors import LLTokenError  # noqa: E402
from bundle.keys import read_passphrase  # noqa: E402
from spool.commands import check_command, make_doctor_command  # noqa: E402
from spool.console import echo_json, home_path, run  # noqa: E402

DEFAULT_HOME = "coordinator"


def _home_default() -> str:
    return os.environ.get("LLTOKEN_HOME", DEFAULT_HOME)


home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=_home_default,
    show_default="$LLTOKEN_HOME or ./coordinator",
    callback=home_path,
    help="The coordinator home directory.",
)
passphrase_option = click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the keystore passphrase from this file (else $LLTOKEN_PASSPHRASE, else a prompt).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@contextmanager
def opened(home: Path, passphrase_file: Path | None) -> Iterator[Any]:
    from coordinator.home import Coordinator

    coord = Coordinator.open(home, read_passphrase(passphrase_file))
    try:
        yield coord
    finally:
        coord.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lltoken-offline")
@click.option("-v", "--verbose", is_flag=True, help="Show Flower's own log lines.")
def cli(verbose: bool) -> None:
    """Run an LL TOKEN OFFLINE federation: enroll agents, run rounds, keep the ledger."""
    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.WARNING)


cli.add_command(check_command)
cli.add_command(make_doctor_command(home_option))


@cli.command()
@home_option
@passphrase_option
@click.option("--name", required=True, help="Federation name, shown to agents.")
@click.option(
    "--strategy",
    default="FedAvg",
    show_default=True,
    help="Flower strategy: FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, "
    "FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Strategy parameter (repeatable), e.g. --param proximal_mu=0.1",
)
@click.option("--rounds", default=5, show_default=True)
@click.option(
    "--participants", default=0, show_default=True, help="Agents per round (0 = all active)."
)
@click.option(
    "--quorum", default=1, show_default=True, help="Updates needed before a round may close."
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--initial-model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Initial model as .npz (default: the Flower app's own initializer).",
)
@click.option(
    "--validation",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Held-out .npz (X, y) the coordinator measures update quality on.",
)
@click.option(
    "--pq",
    is_flag=True,
    help="Post-quantum federation: every identity signs with Ed25519 + ML-DSA-65 (FIPS 204). "
    "Needs: pip install 'lltoken-offline[pq]'.",
)
@json_option
def init(
    home: Path,
    passphrase_file: Path | None,
    name: str,
    strategy: str,
    params: tuple[str, ...],
    rounds: int,
    participants: int,
    quorum: int,
    seed: int,
    initial_model: Path | None,
    validation: Path | None,
    pq: bool,
    as_json: bool,
) -> None:
    """Create a federation: config file, coordinator identity, ledger, initial model."""
    from coordinator.home import Coordinator

    passphrase = read_passphrase(passphrase_file, confirm=True, prompt="New passphrase")
    coord = Coordinator.init(
        home,
        name,
        passphrase,
        strategy=strategy,
        strategy_params=dict(parse_pairs(params)),
        rounds=rounds,
        participants=participants,
        quorum=quorum,
        seed=seed,
        initial_model=initial_model,
        validation=str(validation.resolve()) if validation else "",
        pq=pq,
    )
    info = {
        "home": str(home),
        "federation": name,
        "federation_id": coord.config.federation_id.hex(),
        "fingerprint": coord.identity.fingerprint,
        "suite": coord.suite,
        "config": str(home / "config.toml"),
    }
    coord.close()
    if as_json:
        echo_json(info)
        return
    click.echo(f"federation {name!r} ({info['federation_id']}) created in {home}")
    click.echo(f"coordinator fingerprint: {info['fingerprint']} (signature suite {info['suite']})")
    click.echo(
        f"edit {info['config']}, then give agents an invite: "
        "lltoken-coordinator invite --out invite.json"
    )


def parse_pairs(pairs: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        yield key.strip(), parse_value(value.strip())


def parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@cli.command()
@home_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("invite.json"),
    show_default=True,
)
def invite(home: Path, out: Path) -> None:
    """Write the invite agents need: federation id and coordinator public key."""
    import json

    from coordinator import config as config_file
    from spool.identity_files import load_public, public_to_json

    cfg = config_file.load(home / "config.toml")
    public = load_public(home)
    out.write_text(
        json.dumps(
            {
                "federation_name": cfg.federation_name,
                "federation_id": cfg.federation_id.hex(),
                "coordinator": public_to_json(public),
            },
            indent=2,
        )
        + "\n"
    )
    click.echo(f"wrote {out}; agents run: lltoken-agent init --name NAME --invite {out}")
    click.echo(f"tell them this fingerprint out of band: {public.fingerprint}")


@cli.command()
@home_option
@passphrase_option
@click.option("--approve", "approve", metavar="ID", help="Approve a pending agent.")
@click.option("--reject", "reject", metavar="ID", help="Reject a pending agent.")
@json_option
def enroll(
    home: Path, passphrase_file: Path | None, approve: str | None, reject: str | None, as_json: bool
) -> None:
    """List enrollment requests, or approve/reject one (ID: name, key id or fingerprint).

    Compare each fingerprint with the agent operator out of band before approving.
    """
    with opened(home, passphrase_file) as coord:
        if approve:
            row = coord.approve(approve)
            click.echo(f"approved {row.name} (node {row.node_id}); roster and ledger updated")
            return
        if reject:
            row = coord.reject(reject)
            click.echo(f"rejected {row.name}")
            return
        rows = [
            {
                "name": a.name,
                "key_id": a.key_id.hex(),
                "status": a.status,
                "fingerprint": coord.public_of(a).fingerprint,
            }
            for a in coord.state.agents()
        ]
    if as_json:
        echo_json(rows)
        return
    _table(
        ["name", "status", "fingerprint", "key id"],
        [[r["name"], r["status"], r["fingerprint"], r["key_id"][:16]] for r in rows],
    )


@cli.command()
@home_option
@passphrase_option
@click.argument("agent")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def revoke(home: Path, passphrase_file: Path | None, agent: str, yes: bool) -> None:
    """Revoke an active agent: its bundles are refused from now on."""
    if not yes:
        click.confirm(f"Revoke {agent}? Its future bundles will be quarantined", abort=True)
    with opened(home, passphrase_file) as coord:
        row = coord.revoke(agent)
    click.echo(f"revoked {row.name}; a new roster goes out with the next sync")


@cli.group("round")
def round_group() -> None:
    """Open, close or inspect rounds."""


@round_group.command("open")
@home_option
@passphrase_option
@json_option
def round_open(home: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Open the next round: sample agents, write the global model and their tasks."""
    from coordinator.rounds import open_round

    with opened(home, passphrase_file) as coord:
        info = open_round(coord)
    if as_json:
        echo_json(info)
        return
    click.echo(
        f"round {info['round']} open: {len(info['sampled'])} agents sampled "
        f"({', '.join(info['sampled'])}); sync a stick to deliver the tasks"
    )


@round_group.command("close")
@home_option
@passphrase_option
@click.option("--force", is_flag=True, help="Close even if quorum is not met.")
@json_option
def round_close(home: Path, passphrase_file: Path | None, force: bool, as_json: bool) -> None:
    """Aggregate the round's updates, reward contributors, open the next round."""
    from coordinator.rounds import close_round

    with opened(home, passphrase_file) as coord:
        summary = close_round(coord, force=force)
    if as_json:
        echo_json(summary)
        return
    for line in summary_lines(summary):
        click.echo(line)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The seed's round summary, with real figures."""
    lines = [
        f"Round {summary['round']} Summary:",
        f"  Participants: {summary['participants']}",
        f"  Tokens distributed: {summary['tokens_distributed']}",
        f"  Average quality: {summary['average_quality']:.3f}",
    ]
    if summary.get("accuracy") is not None:
        lines.append(f"  Global loss: {summary['loss']:.4f}  accuracy: {summary['accuracy']:.3f}")
    if not summary.get("aggregated", True):
        lines.append("  (too few updates for the strategy: global model unchanged)")
    return lines


@round_group.command("status")
@home_option
@passphrase_option
@json_option
def round_status(home: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Who was sampled, who has reported, whether the round may close."""
    from coordinator.rounds import ready_to_close

    with opened(home, passphrase_file) as coord:
        status = coord.status()
        ready, why = ready_to_close(coord)
    status["ready_to_close"], status["why"] = ready, why
    if as_json:
        echo_json(status)
        return
    click.echo(f"round {status['round']}/{status['rounds']} {status['round_status']}: {why}")
    _agents_table(status)


@cli.command()
@home_option
@passphrase_option
@json_option
def status(home: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Current round, who has reported and who is late, balances, last checkpoint."""
    with opened(home, passphrase_file) as coord:
        info = coord.status()
    if as_json:
        echo_json(info)
        return
    click.echo(
        f"federation {info['federation']} ({info['federation_id']}), strategy {info['strategy']}"
    )
    click.echo(f"round {info['round']}/{info['rounds']}: {info['round_status']}")
    _agents_table(info)
    cp = info["checkpoint"]
    click.echo(
        f"ledger: {cp['size']} entries, root {cp['root'][:16]}..., total supply "
        f"{info['total_supply']}"
    )
    click.echo(f"spool: {info['inbox']} in inbox, {info['outbox']} in outbox")


def _agents_table(info: dict[str, Any]) -> None:
    rows = []
    for a in info["agents"]:
        state = "-" if not a["sampled"] else ("reported" if a["reported"] else "late")
        rows.append(
            [
                a["name"],
                a["status"],
                state,
                str(a["balance"]),
                f"{a['reputation']:.2f}",
                str(a["streak"]),
            ]
        )
    _table(["agent", "status", "this round", "balance", "reputation", "streak"], rows)


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    click.echo("  ".join("-" * w for w in widths))
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _print_ingest(report: Any, as_json: bool) -> None:
    if as_json:
        echo_json(
            {
                "accepted": report.accepted,
                "rejected": report.rejected,
                "duplicates": report.duplicates,
            }
        )
        return
    click.echo(
        f"{len(report.accepted)} accepted, {len(report.rejected)} rejected, "
        f"{len(report.duplicates)} duplicates"
    )
    for item in report.rejected:
        click.echo(
            f"  rejected {item['file']}: {item.get('reason')} "
            f"(expected {item.get('expected')}, found {item.get('found')})"
        )


@cli.command()
@home_option
@passphrase_option
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def ingest(
    home: Path, passphrase_file: Path | None, paths: tuple[Path, ...], as_json: bool
) -> None:
    """Ingest bundle files (copied into the inbox first), or everything in the inbox."""
    import shutil

    from bundle.durable import atomic_write

    with opened(home, passphrase_file) as coord:
        for path in paths:
            with atomic_write(coord.spool.dirs.inbox / path.name) as out, open(path, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
        report = coord.spool.ingest(coord)
    _print_ingest(report, as_json)


@cli.command()
@home_option
@passphrase_option
@click.argument("media", type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
def sync(home: Path, passphrase_file: Path | None, media: Path, as_json: bool) -> None:
    """Exchange bundles with a mounted stick (in, then out); says when it is safe to remove."""
    from spool.media import sync_media

    with opened(home, passphrase_file) as coord:
        summary = sync_media(coord.spool, coord, media, progress=not as_json)
    if as_json:
        echo_json(summary.to_dict())
        return
    for line in summary.lines():
        click.echo(line)


@cli.command()
@home_option
@passphrase_option
@click.option(
    "--media-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also sync any stick mounted under this folder (e.g. /media).",
)
@click.option("--auto-close", is_flag=True, help="Close rounds on quorum or deadline.")
def watch(
    home: Path, passphrase_file: Path | None, media_root: Path | None, auto_close: bool
) -> None:
    """Ingest bundles as they arrive (and sync sticks, close rounds) until Ctrl-C."""
    from coordinator.rounds import close_round, ready_to_close
    from spool.media import MediaWatcher, sync_media
    from spool.watcher import InboxWatcher, stop_on_signals

    stop = threading.Event()
    stop_on_signals(stop)
    with opened(home, passphrase_file) as coord:

        def on_ready(paths: list[Path]) -> None:
            _print_ingest(coord.spool.ingest(coord, paths), False)

        def on_stick(stick: Path) -> None:
            click.echo(f"stick at {stick}: syncing")
            for line in sync_media(coord.spool, coord, stick).lines():
                click.echo(f"  {line}")

        sticks = MediaWatcher(media_root, on_stick) if media_root else None

        def on_tick() -> None:
            if sticks is not None:
                sticks.poll()
            if auto_close and ready_to_close(coord)[0]:
                for line in summary_lines(close_round(coord)):
                    click.echo(line)

        click.echo(f"watching {coord.spool.dirs.inbox} (Ctrl-C to stop)")
        InboxWatcher(coord.spool.dirs.inbox, on_ready).run(stop, on_tick)
    click.echo("stopped")


@cli.group()
def ledger() -> None:
    """Show, check, verify and export the token ledger."""


@ledger.command("show")
@home_option
@click.option("--last", default=20, show_default=True, help="How many entries.")
@json_option
def ledger_show(home: Path, last: int, as_json: bool) -> None:
    """The latest ledger entries and checkpoint (no passphrase needed)."""
    from coordinator.ledger_proof import describe_entries

    rows, checkpoint = describe_entries(home / "ledger", last)
    if as_json:
        echo_json({"entries": rows, "checkpoint": checkpoint})
        return
    for row in rows:
        click.echo(f"#{row['index']:<6} {row['kind']:<12} {row['summary']}")
    click.echo(f"checkpoint: size {checkpoint['size']}, root {checkpoint['root']}")


@ledger.command("check")
@home_option
@click.option("--repair", is_flag=True, help="Cut a torn tail and rebuild the index.")
@json_option
def ledger_check(home: Path, repair: bool, as_json: bool) -> None:
    """Check the ledger's log and index; --repair fixes what it can."""
    from coordinator.audit import check_store

    report = check_store(home / "ledger", repair=repair)
    if as_json:
        echo_json(report.to_json())
    else:
        problems = report.problems()
        click.echo("ledger ok" if not problems else "\n".join(problems))
    if not report.ok and not repair:
        raise SystemExit(70)


@ledger.command("verify")
@home_option
@click.option(
    "--proof",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also check a tokenization_proof.json against the ledger.",
)
@json_option
def ledger_verify(home: Path, proof: Path | None, as_json: bool) -> None:
    """Audit the whole ledger from scratch: every signature, balance and the root.

    Needs no passphrase: an outside auditor runs this with a copy of the home's ledger/
    folder and identity.pub.json.  Exit code 0 means intact.
    """
    from coordinator.audit import verify_home

    report = verify_home(home, proof)
    if as_json:
        echo_json(report.to_json())
        return
    click.echo(
        f"ledger intact: {report.size} entries, root {report.root.hex()}, "
        f"total supply {report.total_supply}"
    )
    if proof:
        click.echo(f"proof file {proof} matches the ledger")


@ledger.command("export")
@home_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("tokenization_proof.json"),
    show_default=True,
)
def ledger_export(home: Path, out: Path) -> None:
    """Write tokenization_proof.json: checkpoint, key, balances, inclusion proofs."""
    from coordinator.audit import export_home

    export_home(home, out)
    click.echo(
        f"wrote {out}; verify with: lltoken-coordinator ledger verify --home {home} --proof {out}"
    )


@ledger.command("proof")
@home_option
@click.argument("index", type=int)
@json_option
def ledger_proof(home: Path, index: int, as_json: bool) -> None:
    """The inclusion proof of entry INDEX against the latest checkpoint."""
    from coordinator.ledger_proof import entry_proof

    info = entry_proof(home / "ledger", index)
    if as_json:
        echo_json(info)
        return
    click.echo(f"entry {index} of {info['size']}: leaf {info['leaf_hash']}")
    for i, node in enumerate(info["proof"]):
        click.echo(f"  {i}: {node}")


@cli.command()
@click.option("--agents", "num_agents", default=6, show_default=True)
@click.option("--rounds", default=5, show_default=True)
@click.option(
    "--base-path",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("ll_token_system"),
    show_default=True,
    help="Where the homes, the stick and the outputs go (replaced if present).",
)
@click.option("--strategy", default="FedAvg", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--dropout", default=0.0, show_default=True, help="Chance an agent skips a round.")
@click.option(
    "--late",
    default=0.0,
    show_default=True,
    help="Chance an update arrives after its round closed.",
)
@click.option(
    "--duplicate",
    default=0.0,
    show_default=True,
    help="Chance the courier delivers an update twice.",
)
@click.option(
    "--malicious",
    default=0,
    show_default=True,
    help="Agents that poison updates and inflate their self-reports.",
)
@click.option("--local-epochs", default=5, show_default=True)
@click.option(
    "--pq",
    is_flag=True,
    help="Hybrid Ed25519 + ML-DSA-65 signatures for every identity (needs the [pq] extra).",
)
def simulate(
    num_agents: int,
    rounds: int,
    base_path: Path,
    strategy: str,
    seed: int,
    dropout: float,
    late: float,
    duplicate: float,
    malicious: int,
    local_epochs: int,
    pq: bool,
) -> None:
    """Run a whole federation on this machine: real training, real bundles, a stick folder.

    Writes tokenization_proof.json, system_metrics.json and report.html under BASE_PATH.
    """
    from coordinator.simulate import Simulation

    Simulation(
        base_path,
        num_agents,
        strategy=strategy,
        seed=seed,
        dropout=dropout,
        malicious=malicious,
        late=late,
        duplicate=duplicate,
        local_epochs=local_epochs,
        echo=click.echo,
        pq=pq,
    ).run(rounds)
    click.echo(
        f"verify: lltoken-coordinator ledger verify --home {base_path}/coordinator "
        f"--proof {base_path}/tokenization_proof.json"
    )


@cli.command()
@home_option
@passphrase_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
)
def report(home: Path, passphrase_file: Path | None, out: Path) -> None:
    """Write a self-contained HTML report: accuracy, tokens, quality, reputation, ledger."""
    from coordinator.audit import verify_home
    from coordinator.report import render

    with opened(home, passphrase_file) as coord:
        summaries = coord.state.summaries()
        status_info = coord.status()
    try:
        audit = verify_home(home)
        verification: dict[str, Any] = {"ok": True, "size": audit.size}
    except LLTokenError as e:
        verification = {"ok": False, "error": str(e)}
    out.write_text(render(summaries, status_info, verification))
    click.echo(f"wrote {out}")


def main() -> None:
    run(cli, "lltoken-coordinator")
