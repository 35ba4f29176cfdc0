"""pg_scheduler inside a host application that has its own declarative Base and Alembic project.

Pattern A (default): the host's env.py (or deploy step) calls ``pg_scheduler.migrations.upgrade``;
we keep our own version table, and ``exclude_from_autogenerate`` keeps the host's autogenerate away
from our tables. Pattern B: our revisions are an independent ``pg_scheduler`` branch in the host's
``version_locations``, recorded in the host's single version table.

The host project is written into ``tmp_path`` and driven with the real ``alembic`` command. It keeps
its tables in a private schema (its env.py sets ``search_path``) so runs never collide.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import alembic
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pg_scheduler import Scheduler, SchedulerConfig, migrations
from pg_scheduler.cli.base import CliError, Database
from pg_scheduler.errors import MigrationError, SchemaVersionMismatchError
from pg_scheduler.models import build_models
from pg_scheduler.naming import Names

HOST_APP = '''
"""The host application's models: its own Base, nothing of pg_scheduler's."""
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    email: Mapped[str] = mapped_column(sa.Text)
'''

HOST_REVISION = '''
"""customers"""
import sqlalchemy as sa
from alembic import op

revision = "host_0001"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("customers")
'''

HOST_ENV = '''
"""The host's env.py, written the way the README tells hosts to write theirs."""
import sqlalchemy as sa
from alembic import context

from host_app import Base
from pg_scheduler import migrations
from pg_scheduler.models import build_models
from pg_scheduler.naming import Names

config = context.config
options = context.get_x_argument(as_dictionary=True)
scheduler = Names(config.get_main_option("pg_scheduler.table_prefix") or "")
pattern = config.get_main_option("host.pattern")

if pattern == "A":
    # Our tables are not in this metadata: tell autogenerate they are not ours to drop.
    target_metadata = Base.metadata
    include_name = migrations.exclude_from_autogenerate(scheduler)
else:
    # Our revisions are a branch of this history: our models are part of the target.
    target_metadata = [Base.metadata, build_models(scheduler).metadata]
    include_name = None

engine = sa.create_engine(options["url"], poolclass=sa.pool.NullPool)
with engine.connect() as conn:
    # Test plumbing: this host lives in a private schema.
    preparer = conn.dialect.identifier_preparer
    conn.exec_driver_sql("SET search_path TO " + preparer.quote_identifier(options["schema"]))
    conn.commit()
    context.configure(connection=conn, target_metadata=target_metadata, include_name=include_name)
    with context.begin_transaction():
        if pattern == "A" and not context.is_offline_mode():
            # The deploy step of pattern A, inside the host's transaction and before the host's
            # own revisions (so a host foreign key could point at our tables).
            migrations.upgrade(conn, names=scheduler)
        context.run_migrations()
'''


@dataclass(frozen=True)
class Host:
    root: Path
    schema: str
    url: str
    engine: sa.Engine  # connections default to the host's private schema
    names: Names
    app: ModuleType

    def alembic(self, *args: str) -> subprocess.CompletedProcess[str]:
        script = Path(sys.executable).with_name("alembic")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "alembic"]
        command += ["-c", str(self.root / "alembic.ini"), "-x", f"url={self.url}"]
        command += ["-x", f"schema={self.schema}", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG_SCHEDULER_")}
        return subprocess.run(
            command, check=False, cwd=self.root, env=env, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        done = self.alembic(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    def tables(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())

    def host_versions(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
            return set(rows)

    def autogenerate_diff(self, metadata: Any, include_name: Any = None) -> list[Any]:
        with self.engine.connect() as conn:
            opts: dict[str, Any] = {} if include_name is None else {"include_name": include_name}
            context = MigrationContext.configure(conn, opts=opts)
            return list(compare_metadata(context, metadata))


def write_host(root: Path, pattern: str, prefix: str) -> None:
    """A minimal host Alembic project: ini, env.py, one revision, its models."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "host_app.py").write_text(textwrap.dedent(HOST_APP))
    (root / "migrations" / "env.py").write_text(textwrap.dedent(HOST_ENV))
    (versions / "host_0001_customers.py").write_text(textwrap.dedent(HOST_REVISION))
    # The revision template `alembic init` writes.
    template = Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako"
    (root / "migrations" / "script.py.mako").write_text(template.read_text())
    locations = "%(here)s/migrations/versions"
    if pattern == "B":
        # The README's form: the package resource, the same in a wheel and in an editable install
        # (with path_separator = space, never "os").
        locations += " pg_scheduler:_alembic/versions"
    (root / "alembic.ini").write_text(
        textwrap.dedent(
            f"""\
            [alembic]
            script_location = %(here)s/migrations
            path_separator = space
            prepend_sys_path = %(here)s
            version_locations = {locations}
            host.pattern = {pattern}
            pg_scheduler.table_prefix = {prefix}
            """
        )
    )


def load_host_app(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"host_app_{uuid.uuid4().hex}", root / "host_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_fixture(
    pattern: str, prefix: str, tmp_path: Path, engine: sa.Engine, url: str
) -> Iterator[Host]:
    schema = f"host_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    private = sa.create_engine(url, poolclass=sa.pool.NullPool)
    set_path = "SET search_path TO " + private.dialect.identifier_preparer.quote_identifier(schema)

    @sa.event.listens_for(private, "connect", insert=True)  # before the dialect reads it
    def set_search_path(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(set_path)
        cursor.close()
        dbapi_connection.commit()

    write_host(tmp_path, pattern, prefix)
    try:
        yield Host(tmp_path, schema, url, private, Names(prefix), load_host_app(tmp_path))
    finally:
        private.dispose()
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))


@pytest.fixture
def host_a(tmp_path: Path, engine: sa.Engine, pg_scheduler_url: str) -> Iterator[Host]:
    yield from host_fixture("A", "ha_", tmp_path, engine, pg_scheduler_url)


@pytest.fixture
def host_b(tmp_path: Path, engine: sa.Engine, pg_scheduler_url: str) -> Iterator[Host]:
    yield from host_fixture("B", "hb_", tmp_path, engine, pg_scheduler_url)


def our_tables(names: Names) -> set[str]:
    return {names.jobs_table, names.runs_table, names.nodes_table}


# ---------------------------------------------------------------- pattern A
def test_pattern_a_host_env_runs_our_migrations_beside_its_own(host_a: Host) -> None:
    names = host_a.names
    host_a.ok("upgrade", "head")
    assert host_a.tables() == {"customers", "alembic_version", names.version_table} | our_tables(
        names
    )
    assert host_a.host_versions() == {"host_0001"}  # the host's history holds only its own
    assert migrations.is_up_to_date(host_a.engine, names=names)

    # The host's autogenerate, with the filter in its env.py, finds nothing to do.
    assert "No new upgrade operations detected" in host_a.ok("check")

    # A second deploy is a no-op for both histories.
    host_a.ok("upgrade", "head")
    assert host_a.host_versions() == {"host_0001"}
    assert migrations.current(host_a.engine, names=names) == migrations.head()


def test_pattern_a_autogenerate_would_drop_our_tables_without_the_filter(host_a: Host) -> None:
    names = host_a.names
    host_a.ok("upgrade", "head")
    base = host_a.app.Base.metadata
    only_theirs = migrations.exclude_from_autogenerate(names)
    assert host_a.autogenerate_diff(base, include_name=only_theirs) == []

    # Without it: drop every one of our tables (and their indexes), and propose nothing else.
    proposed = {(op[0], op[1].name) for op in host_a.autogenerate_diff(base)}
    dropped_tables = {name for kind, name in proposed if kind == "remove_table"}
    assert dropped_tables == our_tables(names) | {names.version_table}
    assert {kind for kind, _ in proposed} == {"remove_table", "remove_index"}
    assert {name for _, name in proposed} <= set(names.identifiers())


def test_pattern_a_leaves_the_hosts_alembic_context_and_loggers_alone(host_a: Host) -> None:
    """Run from a host's env.py, our nested Alembic run must hand the host its ``context`` back
    (the env.py above calls us before its own ``run_migrations``), and never touch logging."""
    host_logger = logging.getLogger("host.app.billing")
    root_handlers = list(logging.getLogger().handlers)
    host_a.ok("upgrade", "head")  # fails if the host's context was gone after our upgrade
    migrations.upgrade(host_a.engine, names=Names("again_"))
    assert not host_logger.disabled  # logging.config.fileConfig would have disabled it
    assert logging.getLogger().handlers == root_handlers


def test_pattern_a_offline_sql_for_the_host_is_only_the_hosts(host_a: Host) -> None:
    """``alembic upgrade --sql`` of the host emits its DDL; ours comes from our own ``sql()``."""
    sql = host_a.ok("upgrade", "head", "--sql")
    assert "CREATE TABLE customers" in sql
    assert host_a.names.jobs_table not in sql
    assert "CREATE TABLE ha_scheduled_jobs" in migrations.sql(names=host_a.names)


# ---------------------------------------------------------------- pattern B
def test_pattern_b_our_revisions_as_a_branch_of_the_hosts_history(host_b: Host) -> None:
    names = host_b.names
    heads = host_b.ok("heads")
    assert "host_0001 (app) (head)" in heads
    assert "pgs_0006 (pg_scheduler) (head)" in heads

    # Two heads: "upgrade head" refuses; "upgrade heads" is the command.
    single = host_b.alembic("upgrade", "head")
    assert single.returncode != 0
    assert "Multiple head revisions" in single.stdout + single.stderr

    # The host's own short -x options (here also -x schema=) do not steer our revisions.
    host_b.ok("-x", "table_prefix=host_option_", "upgrade", "heads")
    assert host_b.tables() == {"customers", "alembic_version"} | our_tables(names)
    assert host_b.host_versions() == {"host_0001", "pgs_0006"}  # one version table for both

    # The host's autogenerate, with our metadata in its target, finds nothing to do.
    assert "No new upgrade operations detected" in host_b.ok("check")
    target = [host_b.app.Base.metadata, build_models(names).metadata]
    assert host_b.autogenerate_diff(target) == []

    # Each branch downgrades on its own.
    host_b.ok("downgrade", "pg_scheduler@base")
    assert host_b.tables() == {"customers", "alembic_version"}
    assert host_b.host_versions() == {"host_0001"}
    host_b.ok("upgrade", "pg_scheduler@head")
    assert host_b.host_versions() == {"host_0001", "pgs_0006"}


def test_pattern_b_install_is_recognised_at_run_time(host_b: Host) -> None:
    """A node finds a branch install (its revision is in the host's version table) up to date,
    and ``create_schema=True`` does not try to install a second copy beside it."""
    names = host_b.names
    host_b.ok("upgrade", "heads")
    assert migrations.current(host_b.engine, names=names) == migrations.head()
    assert migrations.is_up_to_date(host_b.engine, names=names)
    migrations.check_schema(host_b.engine, names)
    migrations.upgrade(host_b.engine, names=names)  # at head already: nothing to do
    assert names.version_table not in host_b.tables()

    config = SchedulerConfig(engine=host_b.engine, table_prefix=names.prefix, create_schema=True)
    with Scheduler(config) as scheduler:
        key = scheduler.enqueue("anything")
        assert scheduler.get_job(key) is not None

    # Another prefix is not installed just because the host's history holds our revision.
    assert migrations.current(host_b.engine, table_prefix="other_") is None

    # Moving a branch install is the host's job: our API says so instead of failing half-way.
    with pytest.raises(MigrationError, match="alembic downgrade pg_scheduler@"):
        migrations.downgrade(host_b.engine, names=names)


HOST_ORDERS = """

class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("customers.id"))
"""


def test_pattern_b_autogenerate_in_the_order_the_readme_gives(host_b: Host) -> None:
    """The README's order for a host's ``alembic revision --autogenerate`` under pattern B:
    ``alembic upgrade heads`` first, then the revision on the host's own branch, then
    ``alembic upgrade heads`` again. The revision lands in the host's versions directory (never
    in pg_scheduler's) and holds only the host's change."""
    with (host_b.root / "host_app.py").open("a") as app:
        app.write(textwrap.dedent(HOST_ORDERS))
    autogenerate = ("revision", "--autogenerate", "--head", "app@head", "-m", "orders")

    # Skipping the first step is what the README warns about.
    early = host_b.alembic(*autogenerate)
    assert early.returncode != 0
    assert "Target database is not up to date" in early.stdout + early.stderr

    host_b.ok("upgrade", "heads")
    host_b.ok(*autogenerate)
    ours = Path(migrations.script_location()) / "versions"
    assert not [p for p in ours.glob("*orders*")], "written into pg_scheduler's revisions"
    (written,) = (host_b.root / "migrations" / "versions").glob("*_orders.py")
    source = written.read_text()
    assert "op.create_table('orders'" in source or 'op.create_table("orders"' in source
    assert host_b.names.jobs_table not in source  # nothing of ours proposed
    assert "Revises: host_0001" in source  # on the host's branch, not ours

    host_b.ok("upgrade", "heads")
    assert "orders" in host_b.tables()
    assert "No new upgrade operations detected" in host_b.ok("check")
    assert len(host_b.host_versions()) == 2  # the host's new head and ours


def test_a_pattern_b_install_behind_names_the_hosts_alembic_command(host_b: Host) -> None:
    names = host_b.names
    host_b.ok("upgrade", "heads")
    host_b.ok("downgrade", "pg_scheduler@-1")
    with pytest.raises(SchemaVersionMismatchError) as info:
        migrations.check_schema(host_b.engine, names)
    message = str(info.value)
    assert "alembic upgrade heads" in message, message
    assert "pg-scheduler db upgrade" not in message, message
    config = SchedulerConfig(engine=host_b.engine, table_prefix=names.prefix)
    with pytest.raises(SchemaVersionMismatchError, match="alembic upgrade heads"):
        Scheduler(config).start()
    # The command line's check says the same (`pg-scheduler db upgrade` would install a second,
    # pattern A copy of the history next to the host's).
    with pytest.raises(CliError) as cli_info:
        Database(sa.make_url(host_b.url), names).require_schema(host_b.engine)
    assert "alembic upgrade heads" in str(cli_info.value), cli_info.value
    assert "db upgrade" not in str(cli_info.value), cli_info.value


def test_pattern_b_first_own_revision_in_the_order_the_readme_gives(host_b: Host) -> None:
    """A host with no revision of its own yet: ``alembic upgrade heads`` (ours only), then the
    README's first-revision command, which starts the host's own branch in its own directory."""
    (host_b.root / "migrations" / "versions" / "host_0001_customers.py").unlink()
    host_b.ok("upgrade", "heads")
    host_b.ok("revision", "--autogenerate", "--head", "base", "--branch-label", "app",
              "--version-path", "migrations/versions", "-m", "customers")  # fmt: skip
    (written,) = (host_b.root / "migrations" / "versions").glob("*_customers.py")
    source = written.read_text()
    assert "create_table('customers'" in source or 'create_table("customers"' in source
    assert host_b.names.jobs_table not in source
    host_b.ok("upgrade", "heads")
    assert "customers" in host_b.tables()
    assert "No new upgrade operations detected" in host_b.ok("check")
