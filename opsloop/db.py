"""The relational store: one SQLAlchemy engine, migrations, and safe write transactions.

SQLite (the default) runs in WAL mode so readers never block the writer, and every
write transaction starts with ``BEGIN IMMEDIATE`` so two processes (``opsloop serve``
and the CLI, say) queue for the write lock instead of failing halfway through a
transaction; a write that still finds the database locked is retried. PostgreSQL
needs none of this and runs the same code.

The SQLite file holds key hashes, the audit log and every tenant's ledger, so it is created
readable by its owner only (0600, and its folder 0700 when this creates it); SQLite gives its
``-wal`` and ``-shm`` files the database file's mode. :func:`create_private_file` does the same
for other SQLite files opened by libraries (MLflow's).

Every table is on :data:`metadata` and keeps time as :class:`UTCDateTime`. Most are ORM classes
(:mod:`opsloop.tables`); the key store's and the audit log's are Core tables defined beside their
code, and :meth:`Database.rows` reads them without a session. SQLAlchemy's ORM loads with the
first session, so the CLI's key and audit commands never import it: its import took 0.04 s of
CPU and building the ORM classes (which loads PostgreSQL's dialect too) 0.05 s, a fifth of
``opsloop keys list``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    DateTime,
    Dialect,
    Engine,
    Executable,
    MetaData,
    Row,
    TypeDecorator,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from opsloop.errors import BackendError, ConfigError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "UTCDateTime", "create_private_file", "driver_reason", "metadata", "utcnow"]

T = TypeVar("T")

_MIGRATIONS = Path(__file__).parent / "migrations"
_WRITE = "opsloop_write"  # execution option that marks a connection for BEGIN IMMEDIATE
_LOCK_RETRIES = 8

metadata = MetaData()
"""Every opsloop table, as the migrations create them (``opsloop/migrations``)."""


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is stored in UTC and always read back timezone-aware.

    SQLite keeps no zone, PostgreSQL does; this makes both return the same values.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC, taking naive values to be UTC already."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to the naive values SQLite returns."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_private_file(path: Path) -> None:
    """Make sure ``path`` exists with mode 0600, creating its missing folders with mode 0700.

    An existing file is made owner-only too (an earlier version left it 0644). Run it before a
    library creates the file itself, which would leave its mode to the umask.
    """
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


class Database:
    """Engine, sessions and migrations for one database URL."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000) -> None:
        self.url = url
        self.busy_timeout_ms = busy_timeout_ms
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite store."""
        return self.url.startswith("sqlite")

    @property
    def engine(self) -> Engine:
        """The started engine."""
        if self._engine is None:
            raise RuntimeError("Database.start() was not called")
        return self._engine

    def start(self) -> Database:
        """Open the engine; returns self so it can be chained."""
        if self._engine is not None:
            return self
        try:
            if self.is_sqlite:
                self._engine = self._sqlite_engine()
            else:
                self._engine = create_engine(self.url, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise ConfigError(f"cannot use database URL: {exc}", setting="database_url") from exc
        return self

    def _sqlite_engine(self) -> Engine:
        path = self.url.split("///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:"):
            create_private_file(Path(path))
        engine = create_engine(self.url, connect_args={"timeout": self.busy_timeout_ms / 1000})

        @event.listens_for(engine, "connect")
        def _configure(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event below choose how each transaction begins.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            write = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def close(self) -> None:
        """Release every pooled connection."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._sessions = None

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; nothing it does is committed."""
        if self._sessions is None:
            from sqlalchemy.orm import sessionmaker

            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with self._sessions() as session:
            yield session

    def rows(self, query: Executable) -> Sequence[Row[Any]]:
        """The rows of a Core query, read without an ORM session; nothing is committed."""
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction and commit; retried while SQLite is locked.

        ``work`` may run more than once, so it must only touch the session it is given.
        """
        from sqlalchemy.orm import Session

        for attempt in range(_LOCK_RETRIES):
            try:
                with (
                    self.engine.connect().execution_options(**{_WRITE: True}) as conn,
                    Session(bind=conn, expire_on_commit=False) as session,
                ):
                    result = work(session)
                    session.commit()
                    return result
            except OperationalError as exc:
                if "locked" not in str(exc.orig) or attempt == _LOCK_RETRIES - 1:
                    raise BackendError(f"database write failed: {exc.orig}") from exc
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def upgrade(self) -> None:
        """Bring the schema to the newest migration; safe to run from several processes.

        Raises:
            BackendError: The database does not answer (the message names the URL, password hidden).
        """
        try:
            self._upgrade()
        except OperationalError as exc:
            where = make_url(self.url).render_as_string(hide_password=True)
            reason = (
                str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
            )
            raise BackendError(
                f"the database at {where} does not answer: {reason}; check database_url "
                "(OPSLOOP_DATABASE_URL; `opsloop config check` tells what answers)",
                setting="database_url",
            ) from exc

    def _upgrade(self) -> None:
        if self._at_newest_migration():
            # Every CLI command starts here: importing Alembic and reading its scripts only to
            # find nothing to do took 0.13 s of CPU, a quarter of ``opsloop keys list``.
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        # Two processes starting together must not both create the tables: SQLite's
        # BEGIN IMMEDIATE (a write transaction) or a PostgreSQL advisory lock queues them.
        with self.engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(7283001)"))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def _at_newest_migration(self) -> bool:
        """Whether the schema is at the newest migration, read without Alembic.

        Migrations are named ``NNNN_*.py`` with revision ``NNNN``, each on the one before
        (``tests/unit/test_migration_names.py`` holds this), so the newest is the highest
        number. Anything else, a new store included, answers False: Alembic decides then.
        """
        numbers = [path.name[:4] for path in (_MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")]
        if not numbers:
            return False
        try:
            with self.engine.connect() as conn:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except SQLAlchemyError:  # no version table yet
            return False
        return current == [max(numbers)]


def driver_reason(exc: OperationalError) -> str:
    """The first line of what the database driver said (psycopg's messages run to several)."""
    said = str(exc.orig).strip()
    return said.splitlines()[0] if said else type(exc.orig).__name__
