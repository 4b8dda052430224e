"""The agent home: enrollment, pinning the coordinator, importing tasks and models,
training with a Flower ClientApp into an encrypted update, and refusing bad input
without writing anything or losing anything."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from agent.flower_client import ClientAppError
from agent.home import (
    Agent,
    NoTaskError,
    NotPinnedError,
    RosterOffer,
    parse_invite,
)
from bundle.arrays import array_hash, model_hash
from bundle.envelope import open_bundle, pack_bundle
from bundle.errors import (
    DecryptionError,
    FormatError,
    IntegrityError,
    KeystoreError,
    LLTokenError,
    ReplayError,
    SchemaError,
    WrongPassphraseError,
)
from bundle.keys import Identity
from bundle.payloads import (
    EnrollRequest,
    EvalResult,
    GlobalModel,
    LedgerDelta,
    ModelUpdate,
    Receipt,
    Roster,
    RosterMember,
    RoundTask,
)
from spool.lock import LockedError
from tests.agent.test_agent_support import (
    FEDERATION,
    PASSPHRASE,
    CoordinatorSide,
    deliver,
    digits_model,
    enrolled,
    make_agent,
    outbox,
    small_model,
)

# --- a user app in Flower's own example style --------------------------------------------

style_app = ClientApp()
SEEN: list[Context] = []


@style_app.train()
def style_train(msg: Message, context: Context) -> Message:
    SEEN.append(context)
    lr = float(msg.content.config_records["config"]["lr"])  # type: ignore[arg-type]
    epochs = int(context.run_config["local-epochs"])
    partition = int(context.node_config["partition-id"])
    arrays = msg.content.array_records["arrays"]
    new = ArrayRecord({k: Array(v.numpy() + lr * epochs) for k, v in arrays.items()})
    metrics = MetricRecord(
        {
            "num-examples": 100 + partition,
            "train_loss": 0.5,
            "partitions": int(context.node_config["num-partitions"]),
        }
    )
    return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)


@style_app.evaluate()
def style_evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"num-examples": 40, "eval_acc": 0.75})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _broken_app(transform: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records["arrays"]
        new = ArrayRecord({k: Array(transform(v.numpy())) for k, v in arrays.items()})
        metrics = MetricRecord({"num-examples": 10})
        return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)

    return app


raising_app = ClientApp()


@raising_app.train()
def raising_train(msg: Message, context: Context) -> Message:
    raise RuntimeError("the data disk is not mounted")


@pytest.fixture(autouse=True)
def _clear_seen() -> Iterator[None]:
    SEEN.clear()
    yield
    SEEN.clear()


@pytest.fixture
def side(tmp_path: Path) -> CoordinatorSide:
    return CoordinatorSide(tmp_path / "coordinator-out")


@pytest.fixture
def agent(tmp_path: Path, side: CoordinatorSide) -> Iterator[Agent]:
    home = make_agent(tmp_path / "alice", side)
    yield home
    home.close()


def _with_task(agent: Agent, side: CoordinatorSide, arrays: Any = None, **task: Any) -> Any:
    arrays = small_model() if arrays is None else arrays
    roster = side.roster([("alice", agent.public, "active")], [agent.public])
    report = deliver(
        agent,
        roster,
        side.task(agent.public, arrays, **task),
        side.global_model(arrays, [agent.public], round=task.get("round", 1)),
    )
    assert not report.rejected, report.rejected
    return arrays


def _reason(agent: Agent, name: str) -> dict[str, Any]:
    assert agent.spool is not None
    path = agent.spool.dirs.quarantine / f"{name}.reason.json"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


# --- init and enrollment ----------------------------------------------------------------


def test_init_writes_config_identity_and_an_enrollment_request(
    agent: Agent, side: CoordinatorSide, tmp_path: Path
) -> None:
    config = json.loads((tmp_path / "alice" / "agent.json").read_text())
    assert config["federation_id"] == FEDERATION.hex()
    assert config["coordinator"]["fingerprint"] == side.public.fingerprint
    assert config["node_config"] == {"partition-id": 0}
    assert (tmp_path / "alice" / "keystore.json").stat().st_mode & 0o777 == 0o600
    [request] = outbox(agent, "enroll-request")
    assert request.parent.name == side.public.key_id.hex()
    # The coordinator does not know the key yet: the request proves possession itself.
    opened = open_bundle(request, lambda key_id: None, identity=side.identity)
    assert isinstance(opened.payload, EnrollRequest)
    assert opened.payload.name == "alice"
    assert opened.payload.identity == agent.public
    assert "python" in opened.payload.info
    assert opened.header.recipients == (side.public.key_id,)
    assert agent.enrollment() == "pending"
    assert agent.sent("enroll-request")[0].status == "sent"


def test_enroll_receipt_is_recorded(agent: Agent, side: CoordinatorSide) -> None:
    [request] = agent.sent("enroll-request")
    receipt = Receipt(request.bundle_id, "accepted", "pending approval by the operator")
    deliver(agent, side.receipt(agent.public, receipt))
    [after] = agent.sent("enroll-request")
    assert (after.status, after.reason) == ("accepted", "pending approval by the operator")
    assert outbox(agent, "enroll-request") == []  # receipted: the outbox copy goes


def test_init_without_a_coordinator_key_addresses_everyone(tmp_path: Path) -> None:
    with Agent.init(tmp_path / "a", "alice", PASSPHRASE, federation=FEDERATION, fast_kdf=True) as a:
        [request] = outbox(a, "enroll-request")
        assert request.parent.name == "all"
        assert a.coordinator is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: d.pop("coordinator"), FormatError),
        (lambda d: d.update(federation_id="abcd"), FormatError),
        (lambda d: d["coordinator"].update(fingerprint="AAAA-BBBB-CCCC-DDDD"), FormatError),
        (lambda d: d["coordinator"].update(key_id="00" * 16), FormatError),
        (lambda d: d["coordinator"].update(sign="zz"), FormatError),
    ],
)
def test_a_malformed_invite_is_refused(
    side: CoordinatorSide, tmp_path: Path, change: Callable[[dict[str, Any]], Any], error: type
) -> None:
    invite = side.invite()
    change(invite)
    with pytest.raises(error):
        parse_invite(invite)
    with pytest.raises(error):
        Agent.init(tmp_path / "a", "alice", PASSPHRASE, invite=invite, fast_kdf=True)
    assert not (tmp_path / "a" / "keystore.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, SchemaError),  # no federation at all
        ({"federation": b"\x01" * 16, "invite": True}, SchemaError),  # disagrees with invite
        ({"invite": True, "name": "no spaces allowed"}, SchemaError),
        ({"invite": True, "node_config": {"x": [1, 2]}}, SchemaError),
    ],
)
def test_init_refuses_bad_options_before_creating_keys(
    side: CoordinatorSide, tmp_path: Path, kwargs: dict[str, Any], error: type
) -> None:
    args: dict[str, Any] = {"fast_kdf": True}
    name = kwargs.pop("name", "alice")
    if kwargs.pop("invite", False):
        args["invite"] = side.invite()
    args.update(kwargs)
    with pytest.raises(error):
        Agent.init(tmp_path / "a", name, PASSPHRASE, **args)
    assert not (tmp_path / "a" / "keystore.json").exists()


def test_init_twice_and_open_with_the_wrong_passphrase_or_while_locked(
    agent: Agent, side: CoordinatorSide, tmp_path: Path
) -> None:
    with pytest.raises(FormatError, match="already exists"):
        make_agent(tmp_path / "alice", side)
    with pytest.raises(LockedError):
        Agent.open(tmp_path / "alice", PASSPHRASE)
    agent.close()
    with pytest.raises(WrongPassphraseError):
        Agent.open(tmp_path / "alice", "not it")
    with Agent.open(tmp_path / "alice", PASSPHRASE) as again:
        assert again.public == agent.public


# --- trust: the pinned coordinator and nobody else ---------------------------------------


def test_roster_from_the_pinned_coordinator_is_stored(agent: Agent, side: CoordinatorSide) -> None:
    bob = Identity.generate()
    report = deliver(
        agent,
        side.roster(
            [("alice", agent.public, "active"), ("bob", bob.public, "active")],
            [agent.public],
            round=3,
        ),
    )
    assert len(report.accepted) == 1
    assert agent.enrollment() == "active"
    assert [m.name for m in agent.roster()] == ["alice", "bob"]
    assert agent.current_round() == 3
    # The spool answered with a receipt for the coordinator.
    [receipt] = outbox(agent, "receipt")
    assert side.open(receipt, agent.public).payload.status == "accepted"  # type: ignore[attr-defined]


def test_roster_signed_by_another_key_is_refused(agent: Agent, side: CoordinatorSide) -> None:
    mallory = Identity.generate()
    forged = side.roster(
        [("alice", agent.public, "active"), ("mallory", mallory.public, "active")],
        [agent.public],
        signer=mallory,
        names=mallory.public,
    )
    report = deliver(agent, forged)
    assert report.rejected[0]["error"] == "UnknownSenderError"
    assert agent.roster() == []
    assert _reason(agent, forged.name)["error"] == "UnknownSenderError"


def test_roster_naming_another_coordinator_is_refused(agent: Agent, side: CoordinatorSide) -> None:
    other = Identity.generate()
    path = side.roster([("alice", agent.public, "active")], [agent.public], names=other.public)
    report = deliver(agent, path)
    assert report.rejected[0]["error"] == "SchemaError"
    assert "another coordinator" in report.rejected[0]["reason"]


def test_roster_versions_only_move_forward(agent: Agent, side: CoordinatorSide) -> None:
    bob = Identity.generate()
    members = [("alice", agent.public, "active")]
    assert not deliver(agent, side.roster(members, [agent.public], version=2)).rejected
    # The same version again, unchanged (re-sent): harmless.
    assert not deliver(agent, side.roster(members, [agent.public], version=2)).rejected
    # An older one (sticks deliver out of order) is stale: accepted, never applied.
    older = side.roster([*members, ("bob", bob.public, "active")], [agent.public], version=1)
    assert not deliver(agent, older).rejected
    assert [m.name for m in agent.roster()] == ["alice"]
    # Another roster under a version already held: the coordinator signed two.
    changed = side.roster([("alice", agent.public, "revoked")], [agent.public], version=2)
    report = deliver(agent, changed)
    assert "two different rosters" in report.rejected[0]["reason"]
    assert agent.enrollment() == "active"
    newer = side.roster([("alice", agent.public, "revoked")], [agent.public], version=3)
    assert not deliver(agent, newer).rejected
    assert agent.enrollment() == "revoked"


def test_bundles_from_unknown_signers_are_quarantined(agent: Agent, side: CoordinatorSide) -> None:
    mallory = Identity.generate()
    arrays = small_model()
    task = side.pack(
        side_task_payload(agent, arrays),
        [agent.public],
        signer=mallory,
    )
    report = deliver(agent, task)
    assert report.rejected[0]["error"] == "UnknownSenderError"
    assert agent.tasks() == []


def side_task_payload(agent: Agent, arrays: Any) -> RoundTask:
    return RoundTask(1, "train", agent.key_id, model_hash(arrays), {}, {}, 1)


def test_first_roster_is_pinned_only_when_trusted(tmp_path: Path, side: CoordinatorSide) -> None:
    a = Agent.init(tmp_path / "a", "alice", PASSPHRASE, federation=FEDERATION, fast_kdf=True)
    roster = side.roster([("alice", a.public, "active")], [a.public])
    [inbox_copy] = a.import_files([roster])
    with pytest.raises(NotPinnedError):
        a.ingest()
    with pytest.raises(NotPinnedError):
        a.ingest(trust=lambda offer: False)
    assert inbox_copy.exists()  # nothing quarantined while nobody is trusted
    offers: list[RosterOffer] = []

    def trust(offer: RosterOffer) -> bool:
        offers.append(offer)
        return True

    report = a.ingest(trust=trust)
    assert [o.coordinator.fingerprint for o in offers] == [side.public.fingerprint]
    assert report.accepted == [roster.name]
    assert a.coordinator == side.public
    assert a.enrollment() == "active"
    a.close()
    saved = json.loads((tmp_path / "a" / "agent.json").read_text())
    assert saved["coordinator"]["key_id"] == side.public.key_id.hex()


def test_first_use_offers_only_rosters_signed_by_the_key_they_name(
    tmp_path: Path, side: CoordinatorSide
) -> None:
    mallory = Identity.generate()
    with Agent.init(tmp_path / "a", "alice", PASSPHRASE, federation=FEDERATION, fast_kdf=True) as a:
        claims_coordinator = side.roster(
            [("alice", a.public, "active")], [a.public], signer=mallory
        )
        own_key = side.roster(
            [("alice", a.public, "active")], [a.public], signer=mallory, names=mallory.public
        )
        other_federation = side.pack(
            side_roster_payload(side, a), [a.public], federation=b"\x09" * 16
        )
        offers = a.roster_offers([claims_coordinator, own_key, other_federation])
        # Mallory's own roster is offered, showing mallory's fingerprint for the operator
        # to compare; a roster claiming someone else's key is not offered at all.
        assert [o.coordinator.fingerprint for o in offers] == [mallory.public.fingerprint]


def side_roster_payload(side: CoordinatorSide, a: Agent) -> Roster:
    return Roster(1, "x", side.public, (RosterMember("alice", a.public, "active"),))


def test_sync_before_pinning_only_carries_the_request_out(
    tmp_path: Path, side: CoordinatorSide
) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    with Agent.init(tmp_path / "a", "alice", PASSPHRASE, federation=FEDERATION, fast_kdf=True) as a:
        roster = side.roster([("alice", a.public, "active")], [a.public])
        on_stick = stick / "lltoken" / FEDERATION.hex() / a.key_id.hex() / side.public.key_id.hex()
        on_stick.mkdir(parents=True)
        (on_stick / roster.name).write_bytes(roster.read_bytes())
        summary = a.sync(stick)
        assert summary.files_out == 1
        assert summary.files_in == 0
        assert (on_stick / roster.name).exists()
        assert "no coordinator pinned" in summary.skipped[0]["reason"]
        sent = list((stick / "lltoken" / FEDERATION.hex() / "all" / a.key_id.hex()).iterdir())
        assert [p.name.split(".")[0] for p in sent] == ["enroll-request"]
        summary = a.sync(stick, trust=lambda offer: offer.coordinator == side.public)
        assert summary.ingest.accepted == [roster.name]
        assert not (on_stick / roster.name).exists()
        assert a.enrollment() == "active"


# --- tasks and global models --------------------------------------------------------------


def test_task_and_global_model_are_imported(agent: Agent, side: CoordinatorSide) -> None:
    arrays = _with_task(agent, side, round=2, deadline=3)
    [task] = agent.tasks()
    assert (task.round, task.task_type, task.status, task.deadline_round) == (
        2,
        "train",
        "pending",
        3,
    )
    assert task.model_hash == model_hash(arrays)
    assert task.model_present
    assert agent.current_round() == 2
    stored = agent.models.get(model_hash(arrays))
    assert [n for n, _ in stored] == ["w", "b"]
    assert agent.status()["tasks"][0]["round"] == 2


def test_train_writes_an_encrypted_update_only_the_coordinator_opens(
    agent: Agent, side: CoordinatorSide
) -> None:
    arrays = _with_task(
        agent, side, config={"lr": 0.5}, run_config={"local-epochs": 2, "num-partitions": 3}
    )
    result = agent.train(style_app)
    assert result.path is not None
    assert result.path.parent.name == side.public.key_id.hex()
    opened = side.open(result.path, agent.public, parents=arrays)
    update = opened.payload
    assert isinstance(update, ModelUpdate)
    assert opened.header.payload.encryption is not None
    assert opened.header.recipients == (side.public.key_id,)
    assert (update.round, update.parent_hash, update.num_examples) == (1, model_hash(arrays), 100)
    assert update.metrics == {"train_loss": 0.5, "partitions": 3}
    for (name, new), (_, old) in zip(update.arrays, arrays, strict=True):
        np.testing.assert_allclose(new, old + 1.0, err_msg=name)  # lr 0.5 x 2 epochs
    # The app saw the task's run_config and this node's config (num-partitions from the task).
    [context] = SEEN
    assert dict(context.run_config) == {"local-epochs": 2, "num-partitions": 3}
    assert dict(context.node_config) == {"partition-id": 0, "num-partitions": 3}
    assert context.node_id == agent.node_id
    # Nobody else can read it, the agent included.
    with pytest.raises(DecryptionError):
        open_bundle(result.path, {agent.key_id: agent.public}.get, identity=agent.identity)
    assert agent.tasks()[0].status == "done"
    assert agent.sent("model-update")[0].bundle_id == result.bundle_id
    with pytest.raises(NoTaskError, match="is done"):
        agent.train(style_app)


def test_train_with_the_example_app_by_reference(tmp_path: Path, side: CoordinatorSide) -> None:
    with make_agent(tmp_path / "a", side, **{"partition-id": 1}) as a:
        arrays = _with_task(a, side, digits_model(), config={"lr": 0.05})
        result = a.train("agent.example_app:app")
        assert result.path is not None
        update = side.open(result.path, a.public, parents=arrays).payload
        assert isinstance(update, ModelUpdate)
        assert update.num_examples == result.num_examples > 0
        assert "train_loss" in update.metrics
        assert any(
            not np.array_equal(n, o) for (_, n), (_, o) in zip(update.arrays, arrays, strict=True)
        )


def test_evaluate_writes_an_encrypted_eval_result(agent: Agent, side: CoordinatorSide) -> None:
    arrays = _with_task(agent, side, task_type="evaluate")
    result = agent.evaluate(style_app)
    assert result.path is not None
    opened = side.open(result.path, agent.public)
    assert isinstance(opened.payload, EvalResult)
    assert opened.header.payload.encryption is not None
    assert (opened.payload.model_hash, opened.payload.num_examples) == (model_hash(arrays), 40)
    assert opened.payload.metrics == {"eval_acc": 0.75}
    with pytest.raises(NoTaskError, match="no train task"):
        agent.train(style_app)


def test_a_newer_task_supersedes_an_older_one(agent: Agent, side: CoordinatorSide) -> None:
    _with_task(agent, side, round=1, deadline=5)
    second = [(n, a + 1) for n, a in small_model()]
    deliver(agent, side.task(agent.public, second, round=2, deadline=5))
    deliver(agent, side.global_model(second, [agent.public], round=2))
    assert [(t.round, t.status) for t in agent.tasks()] == [(2, "pending"), (1, "superseded")]
    assert agent.train(style_app).round == 2


def test_the_same_task_twice_is_harmless_a_different_one_is_refused(
    agent: Agent, side: CoordinatorSide
) -> None:
    arrays = _with_task(agent, side)
    assert not deliver(agent, side.task(agent.public, arrays)).rejected
    other = deliver(agent, side.task(agent.public, arrays, config={"lr": 0.9}))
    assert "second, different task" in other.rejected[0]["reason"]
    assert len(agent.tasks()) == 1


def test_update_receipts_are_recorded(agent: Agent, side: CoordinatorSide) -> None:
    _with_task(agent, side)
    result = agent.train(style_app)
    receipt = Receipt(result.bundle_id, "late", "round 1 closed before this update arrived")
    deliver(agent, side.receipt(agent.public, receipt, round=2))
    [sent] = agent.sent("model-update")
    assert (sent.status, sent.reason) == ("late", "round 1 closed before this update arrived")
    assert agent.status()["last_update"]["status"] == "late"


# --- bad input: a clear error, no bundle written, nothing lost -----------------------------


def test_a_task_for_another_agent_is_refused(agent: Agent, side: CoordinatorSide) -> None:
    arrays = small_model()
    path = side.task(agent.public, arrays, for_agent=Identity.generate().key_id)
    report = deliver(agent, path)
    assert "for another agent" in report.rejected[0]["reason"]
    assert _reason(agent, path.name)["error"] == "SchemaError"
    assert agent.tasks() == []
    with pytest.raises(NoTaskError):
        agent.train(style_app)


def test_a_task_expired_on_arrival_is_refused(agent: Agent, side: CoordinatorSide) -> None:
    deliver(agent, side.roster([("alice", agent.public, "active")], [agent.public], round=5))
    report = deliver(agent, side.task(agent.public, small_model(), round=2, deadline=3))
    assert report.rejected[0]["error"] == "ReplayError"
    assert "expired" in report.rejected[0]["reason"]
    assert agent.tasks() == []


def test_a_task_whose_deadline_passed_is_not_trained(agent: Agent, side: CoordinatorSide) -> None:
    _with_task(agent, side, round=1, deadline=1)
    deliver(agent, side.roster([("alice", agent.public, "active")], [agent.public], round=3))
    before = outbox(agent)
    with pytest.raises(ReplayError, match="deadline"):
        agent.train(style_app)
    assert outbox(agent) == before
    assert agent.tasks()[0].status == "expired"


def test_a_global_model_that_does_not_match_its_own_hash_is_refused(
    agent: Agent, side: CoordinatorSide
) -> None:
    arrays = small_model()
    path = side.global_model(arrays, [agent.public], claim=b"\x01" * 32)
    report = deliver(agent, path)
    assert report.rejected[0]["error"] == "IntegrityError"
    assert not agent.models.path(b"\x01" * 32).exists()


def test_a_global_model_other_than_the_tasks_is_refused_at_train_time(
    agent: Agent, side: CoordinatorSide
) -> None:
    arrays = small_model()
    other = [(n, a + 7) for n, a in arrays]
    deliver(agent, side.task(agent.public, arrays), side.global_model(other, [agent.public]))
    with pytest.raises(IntegrityError, match="not the one the task names") as caught:
        agent.train(style_app)
    assert caught.value.expected == model_hash(arrays).hex()
    assert caught.value.found == model_hash(other).hex()
    assert outbox(agent, "model-update") == []


def test_training_waits_for_the_global_model(agent: Agent, side: CoordinatorSide) -> None:
    arrays = small_model()
    deliver(agent, side.task(agent.public, arrays))
    with pytest.raises(NoTaskError, match="not arrived"):
        agent.train(style_app)
    deliver(agent, side.global_model(arrays, [agent.public]))
    assert agent.train(style_app).round == 1


def test_a_damaged_stored_model_is_not_trained_on(agent: Agent, side: CoordinatorSide) -> None:
    arrays = _with_task(agent, side)
    path = agent.models.path(model_hash(arrays))
    other_store = agent.models.put([(n, a * 2) for n, a in arrays])
    path.write_bytes(agent.models.path(other_store).read_bytes())
    with pytest.raises(IntegrityError, match="does not match its hash"):
        agent.train(style_app)


@pytest.mark.parametrize(
    ("app", "error", "match"),
    [
        (raising_app, ClientAppError, "data disk is not mounted"),
        (_broken_app(lambda a: a.reshape(-1)), SchemaError, "wrong shape"),
        (_broken_app(lambda a: a.astype(np.float64)), SchemaError, "wrong shape or dtype"),
        (_broken_app(lambda a: a * np.nan), SchemaError, "not finite"),
        (_broken_app(lambda a: a + 1e9), SchemaError, "finite and bounded"),
        ("no_such_module:app", ClientAppError, "cannot load"),
        ("not-a-reference", SchemaError, "module:attribute"),
    ],
)
def test_a_bad_client_app_writes_nothing_and_loses_nothing(
    agent: Agent, side: CoordinatorSide, app: Any, error: type[LLTokenError], match: str
) -> None:
    _with_task(agent, side)
    before = outbox(agent)
    with pytest.raises(error, match=match):
        agent.train(app)
    assert outbox(agent) == before
    assert [t.status for t in agent.tasks()] == ["pending"]
    assert agent.sent("model-update") == []
    # Fix the app, train again: the task and its model are still there.
    assert agent.train(style_app).round == 1


def test_a_run_config_flower_cannot_carry_is_a_clear_error(
    agent: Agent, side: CoordinatorSide
) -> None:
    _with_task(agent, side, run_config={"layers": [1, 2], "local-epochs": 1})
    with pytest.raises(SchemaError, match="run_config"):
        agent.train(style_app)
    assert outbox(agent, "model-update") == []


# --- the ledger replica ------------------------------------------------------------------


def test_ledger_delta_is_verified_and_kept(tmp_path: Path, side: CoordinatorSide) -> None:
    with enrolled(tmp_path / "a", side, grant=25) as a:
        assert a.replica is not None
        assert a.replica.size == 2
        assert a.balance().confirmed == 25
        side.close_round(4, [a.key_id])
        assert not deliver(a, side.delta(a.public, 2, round=4)).rejected
        assert a.current_round() == 4
        assert a.status()["checkpoint"]["size"] == 3


def test_a_rewritten_history_is_refused_loudly_with_evidence(
    tmp_path: Path, side: CoordinatorSide
) -> None:
    with enrolled(tmp_path / "a", side, grant=25) as a:
        fork = CoordinatorSide(tmp_path / "fork", side.identity)
        fork.seq = 1000  # the same signer: fresh sequence numbers, or the spool says replay
        fork.enroll([("alice", a.public)], grant=99)  # same size, other history
        report = deliver(a, fork.delta(a.public))
        assert report.rejected[0]["error"] == "EquivocationError"
        assert a.balance().confirmed == 25
        assert a.status()["equivocation_evidence"]
        # The rejection goes back to the coordinator too.
        receipts = [side.open(p, a.public).payload for p in outbox(a, "receipt")]
        assert any(isinstance(r, Receipt) and r.status == "rejected" for r in receipts)


def test_a_delta_whose_checkpoint_another_key_signed_is_refused(
    tmp_path: Path, side: CoordinatorSide
) -> None:
    with make_agent(tmp_path / "a", side) as a:
        impostor = CoordinatorSide(tmp_path / "imp")
        impostor.enroll([("alice", a.public)])
        delta = impostor.pack(side_delta_payload(impostor), [a.public], signer=side.identity)
        report = deliver(a, delta)
        assert report.rejected[0]["error"] == "SignatureError"
        assert a.replica is not None
        assert a.replica.size == 0


def side_delta_payload(side: CoordinatorSide) -> LedgerDelta:
    return LedgerDelta(0, tuple(side.entries), side.checkpoints[side.tree.size], ())


# --- readers and writers -------------------------------------------------------------------


def test_a_reader_needs_no_keys_and_no_lock(
    agent: Agent, side: CoordinatorSide, tmp_path: Path
) -> None:
    _with_task(agent, side)
    with Agent.inspect(tmp_path / "alice") as reader:
        assert reader.status()["tasks"][0]["round"] == 1
        assert reader.balance().confirmed == 0
        with pytest.raises(KeystoreError, match="needs the agent's keys"):
            reader.train(style_app)
        with pytest.raises(KeystoreError):
            reader.ingest()


def test_state_survives_reopening(agent: Agent, side: CoordinatorSide, tmp_path: Path) -> None:
    _with_task(agent, side)
    agent.close()
    with Agent.open(tmp_path / "alice", PASSPHRASE) as again:
        assert [t.status for t in again.tasks()] == ["pending"]
        assert again.train(style_app).round == 1


# --- durability and delta-encoded models ---------------------------------------------------


def test_a_failed_write_during_train_leaves_nothing_behind(
    agent: Agent, side: CoordinatorSide, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _with_task(agent, side)
    before = outbox(agent)

    def no_rename(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bundle.durable.os.replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        agent.train(style_app)
    monkeypatch.undo()
    assert outbox(agent) == before
    assert [t.status for t in agent.tasks()] == ["pending"]
    assert agent.sent("model-update") == []
    agent.close()
    with Agent.open(tmp_path / "alice", PASSPHRASE) as again:  # recovery finds it clean
        assert again.train(style_app).round == 1


def test_a_global_model_delta_encoded_against_the_previous_one_is_read(
    agent: Agent, side: CoordinatorSide
) -> None:
    rng = np.random.default_rng(3)
    first = [("w", rng.normal(0, 0.1, (128, 64)).astype(np.float32))]
    second = [("w", (first[0][1] + 1e-4).astype(np.float32))]
    deliver(agent, side.global_model(first, [agent.public], round=1))
    side.seq += 1
    packed = pack_bundle(
        side.out,
        GlobalModel(2, model_hash(second), second),
        side.identity,
        federation=FEDERATION,
        round=2,
        seq=side.seq,
        recipients=[agent.public],
        parents={"w": (array_hash(first[0][1]), first[0][1])},
    )
    assert packed.path is not None
    with pytest.raises(IntegrityError):  # it really is a delta: unreadable without its parent
        open_bundle(packed.path, {side.public.key_id: side.public}.get)
    assert not deliver(agent, packed.path).rejected
    assert agent.models.path(model_hash(second)).exists()
