"""Working on this machine's state directly, as the CLI does: the state directory, the store, the caller.

The CLI's key, budget, audit and cost commands read and write only the relational store, and the
registry commands add MLflow. Building a whole :class:`serving.platform.Platform` would also load
the model runtime (SciPy), the RAG catalog and the experiment wiring, which they never use, so
they open a :class:`Store` instead. ``Platform.start_store`` prepares ``home`` with the same
:func:`prepare_home`, so both ways leave the same files with the same modes.

The key and audit commands need of the settings only where the store is. Where the environment
alone says so (:meth:`StoreSettings.from_environment`), they read it without building
:class:`~opsloop.settings.Settings`: pydantic-settings and the validation of every other setting
took 0.05 s of CPU, an eighth of ``opsloop keys list``.

The CLI needs no key: it acts as :func:`cli_principal`, an admin named :func:`cli_actor` in the
audit log.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Generic, TypeVar, cast, get_args

from opsloop.audit import AuditLog
from opsloop.auth import KeyStore, Principal, system_principal
from opsloop.db import Database, create_private_file
from opsloop.errors import ConfigError
from serving.logs import LogLevel

if TYPE_CHECKING:
    from opsloop.settings import Settings

__all__ = [
    "Store",
    "StoreSettings",
    "claim_home",
    "cli_actor",
    "cli_principal",
    "local_url",
    "prepare_home",
]

SettingsT = TypeVar("SettingsT", "Settings", "StoreSettings")


def cli_actor() -> str:
    """How the audit log names someone running the CLI on this machine."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def local_url(settings: Settings) -> str:
    """Where a process on this machine reaches the server these settings describe."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - bound to all; loopback is one of them
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}"


def cli_principal(tenant: str = "default") -> Principal:
    """The caller of CLI commands: an admin of ``tenant``, named as :func:`cli_actor` in the audit log.

    The CLI works on this machine's state directly and needs no key, so it may do what an
    admin may; ``tenant`` is the one its ``--tenant`` option names.
    """
    return system_principal(tenant, cli_actor())


_STORE_ENV = ("OPSLOOP_HOME", "OPSLOOP_DATABASE_URL", "OPSLOOP_MLFLOW_TRACKING_URI", "OPSLOOP_LOG_LEVEL")
"""What :meth:`StoreSettings.from_environment` reads; another ``OPSLOOP_`` variable leaves it to Settings."""


@dataclass(frozen=True)
class StoreSettings:
    """What opening the store reads of the settings, valued as :class:`~opsloop.settings.Settings` has it."""

    home: Path
    db_url: str
    tracking_uri: str
    key_cache_seconds: float
    log_level: LogLevel

    @classmethod
    def from_environment(cls, config: Path | None, home: Path | None) -> StoreSettings | None:
        """What ``load_settings(config, home=home)`` would say, where the environment alone decides it.

        That is when no config file is named and no ``OPSLOOP_`` variable is set but those of
        ``_STORE_ENV``, with a valid ``log_level``: every other setting keeps its default then,
        which Settings accepts. Otherwise None: only Settings can tell (or name what is wrong).
        ``tests/unit/test_cli_fast_settings.py`` holds the answers equal to Settings'.
        """
        if config is not None:
            return None
        env: dict[str, str] = {}
        for name, value in os.environ.items():
            upper = name.upper()  # pydantic-settings matches the names in any case
            if upper.startswith("OPSLOOP_"):
                if upper not in _STORE_ENV or upper in env:
                    return None
                env[upper] = value
        level = env.get("OPSLOOP_LOG_LEVEL", "info")
        if level not in get_args(LogLevel):
            return None
        if home is None:
            home = Path(env.get("OPSLOOP_HOME", ".opsloop"))
        home = home.expanduser().resolve()
        return cls(
            home=home,
            db_url=env.get("OPSLOOP_DATABASE_URL") or f"sqlite:///{home / 'opsloop.db'}",
            tracking_uri=env.get("OPSLOOP_MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            key_cache_seconds=2.0,  # Settings' default, as are the home and URLs above
            log_level=cast(LogLevel, level),
        )


def prepare_home(settings: Settings | StoreSettings) -> None:
    """Create ``home`` owner-only (0700), and MLflow's SQLite file 0600 before MLflow opens it.

    The SQLite databases in ``home`` hold key hashes, every tenant's ledger and audit log;
    MLflow would leave its file's mode to the umask.
    """
    home = settings.home
    if not home.is_dir():
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        home.chmod(0o700)  # mkdir's mode is cut by the umask
    tracking = settings.tracking_uri
    if tracking.startswith("sqlite:///"):
        create_private_file(Path(tracking.removeprefix("sqlite:///")))


def claim_home(settings: Settings) -> IO[str] | None:
    """Make this ``opsloop serve`` the only one on ``home`` while it serves an embedded vector store.

    Qdrant Edge opens a collection in one process only, so a second server on the same home
    would start and then answer every RAG request with 409. The claim is an exclusive ``flock``
    on ``home/serve.lock``, held by the open file this returns for the life of the process (the
    kernel drops it when the process dies, so a crash leaves nothing to clean up). None when the
    vector store is a Qdrant server, which any number of servers share.

    Raises:
        ConfigError: Another server holds the home; the message names it and the settings to change.
    """
    if settings.vector_store != "edge":
        return None
    prepare_home(settings)
    path = settings.home / "serve.lock"
    lock = open(path, "a+")  # noqa: SIM115 - held open until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        try:
            holder = json.loads(lock.read())
        except json.JSONDecodeError:
            holder = {}
        lock.close()
        raise ConfigError(
            f"another opsloop serve (pid {holder.get('pid', 'unknown')}, {holder.get('url', 'url unknown')}) "
            f"already serves {settings.home}, whose embedded vector store (Qdrant Edge) opens in one "
            "process only. Give this server its own state directory (--home or OPSLOOP_HOME), or run "
            "several servers on shared state: OPSLOOP_DATABASE_URL (PostgreSQL), "
            "OPSLOOP_MLFLOW_TRACKING_URI (an MLflow server), OPSLOOP_VECTOR_STORE=qdrant with "
            "OPSLOOP_QDRANT_URL; or one server with --workers N",
            setting="vector_store",
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps({"pid": os.getpid(), "url": local_url(settings)}))
    lock.flush()
    return lock


@dataclass
class Store(Generic[SettingsT]):
    """The migrated relational store with its audit log and key store, and the settings it was opened with."""

    settings: SettingsT
    db: Database
    audit: AuditLog
    keys: KeyStore

    @classmethod
    def open(cls, settings: SettingsT) -> Store[SettingsT]:
        """Prepare ``home``, open the database and migrate it.

        Raises:
            ConfigError: The database URL cannot be used.
        """
        prepare_home(settings)
        db = Database(settings.db_url).start()
        db.upgrade()
        audit = AuditLog(db)
        return cls(settings, db, audit, KeyStore(db, audit, cache_seconds=settings.key_cache_seconds))

    def close(self) -> None:
        """Release the database's connections."""
        self.db.close()
