"""Aliases people steer: set, rollback, protect, each change kept in the alias's history,
which concurrent movers cannot lose an entry of (on a local store and on S3)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from dagster_project.cli import main
from resources.layout import alias_key, model_prefix
from resources.registry.publish import publish_staged
from resources.registry.registry import Registry, RegistryError
from resources.storage import open_store
from resources.storage.keys import open_key_store
from resources.storage.store import LocalStore
from tests.conftest import LLAMA
from tests.published import publish_tiny
from tests.records import version_record
from tests.test_publish_steps import PLAN, REPO, stage

ME = "alice@workstation"


def never_fails(record) -> None:
    """A rollback's verification, for hand-written records that have no files to check."""


@pytest.fixture
def registry(tmp_path) -> Registry:
    registry = Registry(LocalStore(tmp_path / "store"))
    for n in (1, 2, 3):
        registry.publish(version_record(REPO, f"v{n}"))
    return registry


def moves(registry: Registry, alias: str) -> list[tuple]:
    return [
        (e.from_suffix, e.to_suffix, e.why, e.by, e.reason)
        for e in registry.alias(REPO, alias).history
    ]


def test_a_person_sets_any_alias_to_any_published_version(registry):
    registry.set_alias(REPO, "latest", "v3", ME)
    registry.set_alias(REPO, "latest", "v1", ME, reason="v3 answers in French")  # backwards
    assert registry.set_alias(REPO, "latest", "v1", ME) is None  # already there: no entry
    assert registry.resolve(REPO).suffix == "v1"
    assert moves(registry, "latest") == [
        (None, "v3", "set", ME, None),
        ("v3", "v1", "set", ME, "v3 answers in French"),
    ]
    with pytest.raises(RegistryError, match="org/m@v9 is not published"):
        registry.set_alias(REPO, "prod", "v9", ME)
    assert registry.aliases(REPO) == {"latest": "v1"}


def test_publishes_record_their_run_and_skip_a_protected_alias(tmp_path):
    registry = Registry(LocalStore(tmp_path / "store"))
    keys = open_key_store(str(tmp_path / "keys"), str(tmp_path / "store"))
    aliased = PLAN.model_copy(update={"aliases": ["latest", "prod"]})
    staged, report = stage(registry)
    first = publish_staged(registry, registry.store, keys, staged, aliased, report)
    assert set(first.moved) == {"latest", "prod"} and first.kept == []
    registry.protect_alias(REPO, "prod", True, ME, reason="launch week")

    staged, report = stage(registry, run_id="run-2")
    second = publish_staged(
        registry,
        registry.store,
        keys,
        staged,
        aliased.model_copy(update={"run_id": "run-2"}),
        report,
    )

    assert second.record.suffix == "v2" and registry.is_published(REPO, "v2")
    assert registry.aliases(REPO) == {"latest": "v2", "prod": "v1"}
    assert list(second.moved) == ["latest"]
    assert len(second.kept) == 1 and "org/m@prod is protected: left at v1" in second.kept[0]
    assert moves(registry, "latest") == [
        (None, "v1", "publish", "run-1", None),
        ("v1", "v2", "publish", "run-2", None),
    ]
    assert moves(registry, "prod") == [
        (None, "v1", "publish", "run-1", None),
        ("v1", "v1", "protect", ME, "launch week"),
    ]
    # a person still moves it, and it stays protected
    registry.set_alias(REPO, "prod", "v2", ME)
    assert registry.alias(REPO, "prod").protected and registry.aliases(REPO)["prod"] == "v2"
    registry.protect_alias(REPO, "prod", False, ME)
    assert not registry.alias(REPO, "prod").protected


def test_latest_still_only_moves_forward_by_publish(registry):
    registry.move_alias(REPO, "latest", "v2", "run-2")
    assert registry.move_alias(REPO, "latest", "v1", "run-1") is None
    assert moves(registry, "latest") == [(None, "v2", "publish", "run-2", None)]


def test_protecting_a_missing_alias_names_the_ones_there(registry):
    registry.set_alias(REPO, "latest", "v1", ME)
    with pytest.raises(RegistryError, match=r"no alias 'prod' \(aliases: latest\)"):
        registry.protect_alias(REPO, "prod", True, ME)


def test_rollback_undoes_one_move_at_a_time_and_refuses_with_none_left(registry):
    for suffix in ("v1", "v2", "v3"):
        registry.set_alias(REPO, "prod", suffix, ME)
    registry.protect_alias(REPO, "prod", True, ME)  # not a move: nothing to roll back
    registry.rollback_alias(REPO, "prod", ME, "v3 is slow", never_fails)
    assert registry.resolve(f"{REPO}@prod").suffix == "v2"
    registry.rollback_alias(REPO, "prod", ME, None, never_fails)
    assert registry.resolve(f"{REPO}@prod").suffix == "v1"
    with pytest.raises(RegistryError, match="org/m@prod: no previous target"):
        registry.rollback_alias(REPO, "prod", ME, None, never_fails)
    assert moves(registry, "prod")[-2:] == [
        ("v3", "v2", "rollback", ME, "v3 is slow"),
        ("v2", "v1", "rollback", ME, None),
    ]


def test_rollback_refuses_if_the_alias_moved_while_verifying(registry):
    registry.set_alias(REPO, "prod", "v1", ME)
    registry.set_alias(REPO, "prod", "v2", ME)

    def someone_moves_it(record) -> None:
        registry.set_alias(REPO, "prod", "v3", "bob@laptop")

    with pytest.raises(RegistryError, match="changed while v1 was verified"):
        registry.rollback_alias(REPO, "prod", ME, None, someone_moves_it)
    assert registry.aliases(REPO)["prod"] == "v3"


def test_todays_alias_objects_still_read(registry):
    """An alias written before histories were kept: it resolves, shows one synthesized
    entry, and the next move keeps that entry and appends its own."""
    old = {"alias": "latest", "suffix": "v1", "moved_at": "2026-11-01T00:00:00+00:00"}
    registry.store.create(alias_key(REPO, "latest"), json.dumps(old).encode())
    assert registry.resolve(REPO).suffix == "v1"
    assert moves(registry, "latest") == [(None, "v1", "publish", "(not recorded)", None)]
    assert registry.alias(REPO, "latest").previous is None

    registry.move_alias(REPO, "latest", "v2", "run-2")
    assert moves(registry, "latest") == [
        (None, "v1", "publish", "(not recorded)", None),
        ("v1", "v2", "publish", "run-2", None),
    ]
    registry.rollback_alias(REPO, "latest", ME, None, never_fails)
    assert registry.resolve(REPO).suffix == "v1"


# --- concurrency: two movers, many moves each ------------------------------------------


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store_at(request, tmp_path):
    """(uri, s3 settings) of a store each mover opens its own client to."""
    if request.param == "local":
        return str(tmp_path / "store"), None
    s3_env = request.getfixturevalue("s3_env")
    return s3_env.settings.store, s3_env.settings.store_s3


def test_concurrent_movers_lose_no_history_entry(store_at):
    """Two movers (each its own client, as two people's machines) set `prod` 30 times each
    while it is protected. Both first read the same alias (a barrier), so they collide at
    least once; every move either returned its entry or found `prod` already there."""
    uri, s3 = store_at
    setup = Registry(open_store(uri, s3))
    for n in (1, 2, 3):
        setup.publish(version_record(REPO, f"v{n}"))
    setup.set_alias(REPO, "prod", "v1", "setup")
    setup.protect_alias(REPO, "prod", True, "setup")
    barrier, lost = threading.Barrier(2), []
    written: list[list[str]] = [[], []]

    def mover(i: int) -> None:
        registry = Registry(open_store(uri, s3))
        read, replace = registry.store.read_versioned, registry.store.replace
        waited = False

        def read_then_wait(key):
            nonlocal waited
            found = read(key)
            if not waited:
                waited = True
                barrier.wait(timeout=60)
            return found

        def counting_replace(key, data, tag):
            swapped = replace(key, data, tag)
            if not swapped:
                lost.append(i)
            return swapped

        registry.store.read_versioned, registry.store.replace = read_then_wait, counting_replace
        for j in range(30):
            entry = registry.set_alias(
                REPO, "prod", f"v{1 + (i + j + 1) % 3}", f"mover-{i}", f"{j}"
            )
            if entry is not None:
                written[i].append(entry.reason)

    threads = [threading.Thread(target=mover, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    prod = Registry(open_store(uri, s3)).alias(REPO, "prod")
    kept = prod.history[2:]  # after the setup's set and protect
    for i in range(2):
        assert [e.reason for e in kept if e.by == f"mover-{i}"] == written[i]
    assert len(kept) == len(written[0]) + len(written[1]) and all(written)
    # one chain: each entry moves from where the one before it left the alias
    assert all(a.to_suffix == b.from_suffix for a, b in zip(prod.history[1:], kept, strict=False))
    assert prod.suffix == prod.history[-1].to_suffix and prod.protected
    assert lost  # the movers really did collide


# --- the CLI, end to end ---------------------------------------------------------------


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def published(env) -> Registry:
    registry = Registry(LocalStore(env.settings.store))
    for n in (1, 2):
        registry.publish(version_record(LLAMA, f"v{n}"))
    registry.move_alias(LLAMA, "latest", "v2", "run-7")
    return registry


def test_alias_commands_and_history_end_to_end(published, capsys, instance):
    code, out, _ = cli(capsys, "alias", "set", f"{LLAMA}@v1", "prod", "--reason", "known good")
    assert code == 0 and out.strip().startswith(f"{LLAMA}@prod: nothing -> v1 (set by ")
    assert cli(capsys, "alias", "protect", LLAMA, "prod")[0] == 0
    code, out, _ = cli(capsys, "alias", "protect", LLAMA, "prod")
    assert out.strip() == f"{LLAMA}@prod: unchanged, at v1 and protected"
    code, out, _ = cli(capsys, "alias", "set", f"{LLAMA}@latest", "prod")  # via an alias
    assert code == 0 and "v1 -> v2" in out

    code, out, _ = cli(capsys, "history", LLAMA)
    header, *rows = out.splitlines()
    assert header.split() == ["AT", "ALIAS", "FROM", "TO", "WHY", "BY", "REASON"]
    starts = [header.index(c) for c in ("ALIAS", "FROM", "TO", "WHY", "BY", "REASON")]
    for row in rows:  # every column starts where its header does
        assert all(row[s - 2 : s] == "  " and row[s] != " " for s in starts), row
    assert [r.split()[1:5] for r in rows] == [
        ["latest", "-", "v2", "publish"],
        ["prod", "-", "v1", "set"],
        ["prod", "v1", "v1", "protect"],
        ["prod", "v1", "v2", "set"],
    ]
    assert rows[0].split()[5] == "run-7" and rows[1].endswith("known good")

    code, out, _ = cli(capsys, "history", f"{LLAMA}@prod", "--json")
    entries = json.loads(out)
    assert [(e["alias"], e["to_suffix"], e["why"], e["reason"]) for e in entries] == [
        ("prod", "v1", "set", "known good"),
        ("prod", "v1", "protect", None),
        ("prod", "v2", "set", None),
    ]
    assert entries[0]["by"] == entries[2]["by"] and "@" in entries[0]["by"]

    from dagster import AssetKey

    seen = instance.fetch_observations(AssetKey("published_version"), limit=10).records
    observed = [r.asset_observation for r in reversed(seen)]
    assert {o.partition for o in observed} == {LLAMA.replace("/", "__")}
    assert [(o.metadata["why"].value, o.metadata["to"].value) for o in observed] == [
        ("set", "v1"),
        ("protect", "v1"),
        ("set", "v2"),
    ]


def test_cli_refusals_are_one_line(published, capsys):
    for args, expected in [
        (["alias", "set", f"{LLAMA}@v9", "prod"], f"{LLAMA}@v9 is not published"),
        (["alias", "rollback", LLAMA, "latest"], f"{LLAMA}@latest: no previous target"),
        (["alias", "protect", LLAMA, "prod"], f"{LLAMA}: no alias 'prod' (aliases: latest)"),
        (["history", f"{LLAMA}@prod"], f"{LLAMA}: no alias 'prod'"),
    ]:
        code, out, err = cli(capsys, *args)
        assert code == 1 and out == "", args
        assert err.count("\n") == 1 and err.startswith("modelpub: ") and expected in err, err


def test_a_move_is_made_when_dagster_is_unavailable(published, capsys, monkeypatch):
    def no_instance(settings):
        raise OSError("dagster_home is read-only")

    monkeypatch.setattr("dagster_project.cli.aliases.instance", no_instance)
    code, out, err = cli(capsys, "alias", "set", f"{LLAMA}@v1", "latest")
    assert code == 0 and "v2 -> v1" in out
    assert err.strip() == (
        f"modelpub: warning: {LLAMA}@latest changed, but the Dagster instance did not record "
        "it: dagster_home is read-only"
    )
    assert published.aliases(LLAMA) == {"latest": "v1"}


# --- rollback verifies the version it goes back to --------------------------------------


@pytest.fixture
def real_v1(env) -> Path:
    """v1 of the tiny Llama written by the real artifact writer and signed; v2 a
    hand-written record; `prod` moved v1 -> v2. Returns v1's directory."""
    store = LocalStore(env.settings.store)
    registry = Registry(store)
    assert publish_tiny(env, LLAMA).suffix == "v1"  # signed, as a publish signs it
    registry.publish(version_record(LLAMA, "v2"))
    registry.set_alias(LLAMA, "prod", "v1", ME)
    registry.set_alias(LLAMA, "prod", "v2", ME)
    return store.path(model_prefix(LLAMA, "v1"))


def test_rollback_goes_back_to_a_version_that_verifies(real_v1, env, capsys):
    code, out, _ = cli(capsys, "alias", "rollback", LLAMA, "prod", "--reason", "v2 is broken")
    assert code == 0 and f"{LLAMA}@prod: v2 -> v1 (rollback by " in out
    registry = Registry(LocalStore(env.settings.store))
    assert registry.aliases(LLAMA)["prod"] == "v1"
    assert registry.alias(LLAMA, "prod").history[-1].reason == "v2 is broken"


def test_rollback_refuses_a_tampered_version(real_v1, env, capsys):
    tensors = real_v1 / "model.tensors"
    data = bytearray(tensors.read_bytes())
    data[-100] ^= 0x10
    tensors.write_bytes(bytes(data))

    code, out, err = cli(capsys, "alias", "rollback", LLAMA, "prod")

    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"modelpub: {LLAMA}@v1 fails verification, not rolling back: ")
    assert "model.tensors: sha256 does not match the record" in err
    assert Registry(LocalStore(env.settings.store)).aliases(LLAMA)["prod"] == "v2"
