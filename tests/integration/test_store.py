"""The relational store's contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError

from opsloop.audit import AuditFilter, AuditLog
from opsloop.auth import KeyStore, Role
from opsloop.db import Database
from opsloop.errors import ConflictError, InvalidInputError, NotFoundError, UnauthorizedError
from opsloop.tables import AuditEvent


def test_migrations_create_the_tables_and_are_idempotent(database: Database) -> None:
    database.upgrade()  # a second run finds the schema at head and does nothing
    tables = set(inspect(database.engine).get_table_names())
    assert {"api_keys", "audit_events", "alembic_version"} <= tables


def test_key_lifecycle_is_audited(database: Database) -> None:
    audit = AuditLog(database)
    keys = KeyStore(database, audit, cache_seconds=60)
    new = keys.create("acme", Role.OPERATOR, name="ci bot", actor="cli:test")
    secret = new.secret.get_secret_value()
    assert secret.startswith(f"olk_{new.info.id}_")
    assert secret not in repr(new)

    principal = keys.authenticate(secret)
    assert (principal.tenant, principal.role, principal.key_id) == ("acme", Role.OPERATOR, new.info.id)
    assert [k.id for k in keys.list(tenant="acme")] == [new.info.id]

    keys.revoke(new.info.id, actor="cli:test")
    with pytest.raises(UnauthorizedError):
        keys.authenticate(secret)  # revocation skips the cache in the revoking process
    assert keys.list(tenant="acme") == []
    assert keys.list(tenant="acme", include_revoked=True)[0].revoked_at is not None

    entries = audit.query(AuditFilter(tenant="acme"))
    assert [e.action for e in entries] == ["key.revoke", "key.create"]
    revoke, create = entries
    assert create.after is not None and create.after["role"] == "operator"
    assert revoke.before is not None and revoke.before["revoked_at"] is None
    assert revoke.after is not None and revoke.after["revoked_at"] is not None
    assert all(e.actor == "cli:test" and e.target == f"key:{new.info.id}" for e in entries)
    assert secret not in str([e.to_dict() for e in entries])


def test_bad_keys_are_refused(database: Database) -> None:
    keys = KeyStore(database, AuditLog(database))
    real = keys.create("acme", Role.USER, actor="t").secret.get_secret_value()
    forged = real[:-4] + ("aaaa" if not real.endswith("aaaa") else "bbbb")
    for presented in [None, "", "nonsense", "olk_unknown_secret", forged]:
        with pytest.raises(UnauthorizedError):
            keys.authenticate(presented)


def test_key_errors_are_specific(database: Database) -> None:
    keys = KeyStore(database, AuditLog(database))
    with pytest.raises(InvalidInputError, match="tenant"):
        keys.create("Not A Tenant!", Role.USER, actor="t")
    with pytest.raises(InvalidInputError, match="viewer, user, operator, admin"):
        Role.parse("root")
    with pytest.raises(NotFoundError):
        keys.revoke("0000", actor="t")
    key = keys.create("acme", Role.USER, actor="t")
    keys.revoke(key.info.id, actor="t")
    with pytest.raises(ConflictError):
        keys.revoke(key.info.id, actor="t")


def test_first_admin_key_is_created_once(database: Database) -> None:
    keys = KeyStore(database, AuditLog(database))
    first = keys.create_first_admin(actor="system")
    assert first is not None and first.info.role is Role.ADMIN
    assert keys.create_first_admin(actor="system") is None


def test_audit_log_is_append_only(database: Database) -> None:
    AuditLog(database).append(actor="a", tenant="t", action="x.do", target="y")
    for statement in ["UPDATE audit_events SET action = 'forged'", "DELETE FROM audit_events"]:
        with pytest.raises(DBAPIError, match="append-only"), database.engine.begin() as conn:
            conn.execute(text(statement))
    with database.read() as session:
        assert session.scalars(select(AuditEvent.action)).all() == ["x.do"]


def test_audit_filters(database: Database) -> None:
    audit = AuditLog(database)
    for i in range(5):
        audit.append(actor=f"k{i % 2}", tenant="t1" if i < 3 else "t2", action=f"a{i % 3}", target=f"x{i}")
    assert len(audit.query(AuditFilter(tenant="t1"))) == 3
    assert [e.target for e in audit.query(AuditFilter(actor="k1"))] == ["x3", "x1"]
    assert [e.target for e in audit.query(AuditFilter(action="a0"))] == ["x3", "x0"]
    assert len(audit.query(AuditFilter(limit=2))) == 2
    newest = audit.query(AuditFilter(limit=1))[0]
    assert newest.at.tzinfo is not None
    assert audit.query(AuditFilter(since=newest.at + timedelta(seconds=1))) == []
    assert len(audit.query(AuditFilter(until=datetime.now(UTC) + timedelta(seconds=1)))) == 5
    assert [e.target for e in audit.query(AuditFilter(after_id=newest.id - 2))] == ["x3", "x4"]


def _write_events(url: str, writer: int, count: int, start_at: float) -> None:
    db = Database(url).start()
    audit = AuditLog(db)
    keys = KeyStore(db, audit)
    while time.time() < start_at:  # start both writers together
        time.sleep(0.001)
    for i in range(count):
        audit.append(actor=f"writer{writer}", tenant="t", action="test.write", target=str(i))
        if i % 20 == 0:
            keys.create("t", Role.VIEWER, actor=f"writer{writer}")
    db.close()


@pytest.mark.parametrize("writers", [2])
def test_concurrent_writers_in_two_processes_lose_nothing(database: Database, writers: int) -> None:
    count = 150
    start_at = time.time() + 1.5  # after both processes have imported everything
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_write_events, args=(database.url, w, count, start_at)) for w in range(writers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    audit = AuditLog(database)
    for w in range(writers):
        rows = audit.query(AuditFilter(actor=f"writer{w}", action="test.write", limit=1000))
        assert sorted(int(e.target) for e in rows) == list(range(count))
    assert len(KeyStore(database, audit).list(tenant="t")) == writers * ((count + 19) // 20)
    if database.is_sqlite:
        with database.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 's.db'}").start()
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    db.close()
