"""Declarative models of the job state, built per (table prefix, schema).

``build_models(names)`` creates a private ``DeclarativeBase`` with its own ``MetaData`` for each
``Names``, so several installations can live in one process and the host application's ``Base`` never
sees (or ``create_all``s) our tables. The ``TablePrefixMixin`` derives every table name from the
``Names`` bound to that base. The schema itself is installed by the Alembic revisions, never by
``create_all``; tests prove the two agree, catalog entry by catalog entry.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from .cron import MISFIRE_POLICIES
from .naming import Names
from .states import TERMINAL_STATUSES, JobStatus, JobType, RunStatus

TIMESTAMP = sa.DateTime(timezone=True)


class _Domain:
    """A column type declared as one of the installation's domains (pgs_0005) and used in every
    statement as the domain's base type: the same parameters, casts and results as before."""

    def __init__(self, name: str, schema: str | None) -> None:
        super().__init__()
        self.name = name
        self.schema = schema


class DomainText(_Domain, sa.types.TypeDecorator[str]):
    impl = sa.Text
    cache_ok = True


class DomainInteger(_Domain, sa.types.TypeDecorator[int]):
    impl = sa.Integer
    cache_ok = True


@compiles(DomainText, "postgresql")
@compiles(DomainInteger, "postgresql")
def _domain_name(type_: _Domain, compiler: Any, **kw: Any) -> str:
    # In DDL (the tests' create_all) the column is declared with the domain's quoted name.
    return str(compiler.dialect.identifier_preparer.format_type(type_))


def one_of(column: str, values: Iterable[str]) -> sa.ColumnElement[bool]:
    """``column IN ('a', 'b', ...)`` for a CHECK or a partial index, the values taken from the
    enums in ``states`` (and ``cron.MISFIRE_POLICIES``), never written out twice. Rendered with
    literal values, in the order given (the catalog comparison with the migrations normalises the
    text)."""
    return sa.literal_column(column).in_(list(values))


def _is(column: str, value: str) -> sa.ColumnElement[bool]:
    return sa.literal_column(column) == sa.literal(value, sa.Text)


#: The finished states in the enum's order: an index predicate's text keeps the order it was
#: created with (pgs_0001), and the catalog comparison reads the text.
_FINISHED_ORDER = [s for s in JobStatus if s in TERMINAL_STATUSES]


#: The jobs table's one-column rules, each carried by a domain over the column's type instead of
#: a CHECK on the table (pgs_0005). PostgreSQL prepares a domain's check once per session (its
#: type cache) but rebuilds a table's CHECK from its stored tree in every statement that writes
#: the table: about a third of what the eight CHECKs cost each enqueue (~10 us; see
#: ``benchmarks.profiles.profile_insert_cost``). The rules are the same.
#: (domain suffix, base type, check constraint suffix, check, columns)
JOB_DOMAINS: tuple[
    tuple[str, type[sa.types.TypeEngine[Any]], str, str | sa.ColumnElement[bool], tuple[str, ...]],
    ...,
] = (
    ("status_t", sa.Text, "status_ck", one_of("VALUE", [s.value for s in JobStatus]), ("status",)),
    (
        "job_type_t",
        sa.Text,
        "job_type_ck",
        one_of("VALUE", [t.value for t in JobType]),
        ("job_type",),
    ),
    ("misfire_t", sa.Text, "misfire_ck", one_of("VALUE", MISFIRE_POLICIES), ("misfire",)),
    (
        "count_t",
        sa.Integer,
        "counts_ck",
        "VALUE >= 0",
        ("attempt", "max_retries", "consecutive_failures", "lost_leases"),
    ),
    ("name_t", sa.Text, "name_ck", "char_length(VALUE) BETWEEN 1 AND 200", ("name",)),
)


def job_domains(names: Names) -> list[postgresql.DOMAIN]:
    """The jobs table's domains for ``names``, with their checks, as SQLAlchemy creates them."""
    return [
        postgresql.DOMAIN(
            names.job(suffix),
            base,
            schema=names.schema,
            constraint_name=names.job(check_suffix),
            check=check,  # type: ignore[arg-type]  # a ColumnElement compiles as text does
        )
        for suffix, base, check_suffix, check, _ in JOB_DOMAINS
    ]


def _domain(names: Names, column: str) -> DomainText | DomainInteger:
    for suffix, base, _, _, columns in JOB_DOMAINS:
        if column in columns:
            kind = DomainInteger if base is sa.Integer else DomainText
            return kind(names.job(suffix), names.schema)
    raise KeyError(column)


def _domain_column(column: str, *, nullable: bool = False, **kw: Any) -> Any:
    """A mixin column typed by its installation's domain (NOT NULL unless ``nullable``): built
    when the model is mapped, from the ``Names`` of its base (a lambda's annotation does not say
    whether the column is nullable)."""
    return declared_attr(
        lambda cls: mapped_column(_domain(cls.__names__, column), nullable=nullable, **kw)
    )


def _create_domains(target: sa.Table, connection: sa.Connection, **kw: Any) -> None:
    # With the table, in a ``create_all`` (tests compare it with what the migrations make).
    for domain in job_domains(target.info["pg_scheduler.names"]):
        domain.create(connection, checkfirst=bool(kw.get("checkfirst", False)))


def _drop_domains(target: sa.Table, connection: sa.Connection, **kw: Any) -> None:
    # An installation dropped at a revision before pgs_0005 has none.
    for domain in job_domains(target.info["pg_scheduler.names"]):
        domain.drop(connection, checkfirst=True)


class TablePrefixMixin:
    """Names a model's table ``{prefix}{__table_basename__}`` from the ``Names`` of its base."""

    __names__: ClassVar[Names]
    __table_basename__: ClassVar[str]

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return f"{cls.__names__.prefix}{cls.__table_basename__}"


class ScheduledJobRow(TablePrefixMixin):
    """One recurring job (key = its name) or one one-time run request (key = ``name#<uuid>``)."""

    __table_basename__ = "scheduled_jobs"

    key: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    cron: Mapped[str | None] = mapped_column(sa.Text)
    timezone: Mapped[str] = mapped_column(sa.Text, server_default="UTC")
    misfire_grace: Mapped[dt.timedelta] = mapped_column(
        sa.Interval, server_default=sa.text("'00:01:00'::interval")
    )
    params: Mapped[Any | None] = mapped_column(postgresql.JSONB(none_as_null=True))
    # When the next attempt may start (a tick, a run_at, or a retry after backoff).
    next_run: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP)
    # The tick (or requested run time) the pending/running attempt belongs to; retries keep it.
    scheduled_at: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP)
    lease_id: Mapped[uuid.UUID | None] = mapped_column(postgresql.UUID(as_uuid=True))
    node_id: Mapped[str | None] = mapped_column(sa.Text)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    last_run_at: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP)
    last_failure_at: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    # BIGINT: the original's int4 milliseconds overflowed after 24.8 days.
    execution_time_ms: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(TIMESTAMP, server_default=sa.func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(TIMESTAMP, server_default=sa.func.now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP)

    # The columns whose one-column rule a domain carries (JOB_DOMAINS): declared per installation.
    name: Mapped[str] = _domain_column("name")
    job_type: Mapped[str] = _domain_column("job_type")
    misfire: Mapped[str] = _domain_column("misfire", server_default="coalesce")
    status: Mapped[str] = _domain_column("status", server_default=JobStatus.PENDING.value)
    # Attempts made for the current tick (recurring) or run request (one-time); 1-based once claimed.
    attempt: Mapped[int] = _domain_column("attempt", server_default="0")
    # retries = N allows N + 1 attempts; NULL (pgs_0006): the handler's, resolved by the node that
    # runs the job. Attempts count failures only: a lost or handed-back run uses none.
    max_retries: Mapped[int | None] = _domain_column(
        "max_retries", nullable=True, server_default="0"
    )
    consecutive_failures: Mapped[int] = _domain_column("consecutive_failures", server_default="0")
    # Runs of the current run request or tick lost in a row (pgs_0006): their node died, hung or
    # was cut off. Bounds a job that takes its node down on every run.
    lost_leases: Mapped[int] = _domain_column("lost_leases", server_default="0")

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        n = cls.__names__
        pending, running = JobStatus.PENDING.value, JobStatus.RUNNING.value
        return (
            sa.PrimaryKeyConstraint("key", name=n.job("pkey")),
            # status, job_type, misfire, the three counts and the name: see JOB_DOMAINS.
            # running <=> a lease is held; a running row also names its node and last heartbeat.
            sa.CheckConstraint(
                sa.and_(
                    _is("status", running) == sa.literal_column("lease_id").is_not(None),
                    sa.or_(
                        sa.literal_column("status") != sa.literal(running, sa.Text),
                        sa.literal_column("node_id").is_not(None)
                        & sa.literal_column("heartbeat_at").is_not(None),
                    ),
                ),
                name=n.job("lease_ck"),
            ),
            sa.CheckConstraint(
                _is("job_type", JobType.RECURRING.value) == sa.literal_column("cron").is_not(None),
                name=n.job("cron_ck"),
            ),
            sa.CheckConstraint(
                sa.or_(
                    sa.literal_column("status") != sa.literal(pending, sa.Text),
                    sa.literal_column("next_run").is_not(None)
                    & sa.literal_column("scheduled_at").is_not(None),
                ),
                name=n.job("next_run_ck"),
            ),
            # Serves the claim: the few due rows among many pending ones, in due order.
            sa.Index(n.job("due_ix"), "next_run", postgresql_where=_is("status", pending)),
            # Serves the stall rescue: only running rows, by heartbeat age.
            sa.Index(n.job("running_ix"), "heartbeat_at", postgresql_where=_is("status", running)),
            # Serves retention cleanup of finished one-time jobs.
            sa.Index(
                n.job("finished_ix"),
                "finished_at",
                postgresql_where=one_of("status", [s.value for s in _FINISHED_ORDER]),
            ),
            # No index on name (pgs_0003): each would take a new entry at every claim and outcome.
            {
                "info": {"pg_scheduler.names": n},
                "listeners": [("before_create", _create_domains), ("after_drop", _drop_domains)],
            },
        )


#: The runs table's storage parameter (pgs_0004), set after CREATE TABLE; see JobRunRow.
RUNS_STORAGE = "ALTER TABLE %(fullname)s SET (fillfactor = 50)"


class JobRunRow(TablePrefixMixin):
    """One attempt of one job: the durable record of every tick that ran, and the history."""

    __table_basename__ = "job_runs"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    job_key: Mapped[str] = mapped_column(sa.Text)
    name: Mapped[str] = mapped_column(sa.Text)
    scheduled_at: Mapped[dt.datetime] = mapped_column(TIMESTAMP)
    attempt: Mapped[int] = mapped_column(sa.Integer)
    node_id: Mapped[str] = mapped_column(sa.Text)
    lease_id: Mapped[uuid.UUID] = mapped_column(postgresql.UUID(as_uuid=True))
    status: Mapped[str] = mapped_column(sa.Text, server_default=RunStatus.RUNNING.value)
    started_at: Mapped[dt.datetime] = mapped_column(TIMESTAMP, server_default=sa.func.now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP)
    duration_ms: Mapped[int | None] = mapped_column(sa.BigInteger)
    error: Mapped[str | None] = mapped_column(sa.Text)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        n = cls.__names__
        return (
            sa.PrimaryKeyConstraint("id", name=n.run("pkey")),
            sa.CheckConstraint(
                one_of("status", [s.value for s in RunStatus]), name=n.run("status_ck")
            ),
            sa.UniqueConstraint("lease_id", name=n.run("lease_uq")),
            # The index of a job's history, newest first (the tick, then the attempt). No other
            # index: each is written twice per attempt (the claim, the outcome). Not unique since
            # pgs_0006: a run handed back or lost and run again keeps its attempt number, so one
            # attempt of one tick can have several rows; the job row's fenced transitions keep a
            # tick from running twice at once.
            sa.Index(n.run("tick_ix"), "job_key", "scheduled_at", "attempt"),
            # Half-empty pages (pgs_0004): the outcome update then finds room for the row's new
            # version on its own page and stays HOT (no new index entries), instead of half the
            # time. A storage parameter, so a DDL hook rather than a column or constraint.
            {"listeners": [("after_create", sa.DDL(RUNS_STORAGE))]},  # type: ignore[no-untyped-call]
        )


class NodeRow(TablePrefixMixin):
    """One scheduler process, live or recently stopped, and the job names it registered."""

    __table_basename__ = "nodes"

    node_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    node_name: Mapped[str] = mapped_column(sa.Text)
    hostname: Mapped[str] = mapped_column(sa.Text)
    pid: Mapped[int] = mapped_column(sa.Integer)
    job_names: Mapped[list[str]] = mapped_column(
        postgresql.ARRAY(sa.Text), server_default=sa.text("'{}'::text[]")
    )
    started_at: Mapped[dt.datetime] = mapped_column(TIMESTAMP, server_default=sa.func.now())
    last_seen_at: Mapped[dt.datetime] = mapped_column(TIMESTAMP, server_default=sa.func.now())
    stopped_at: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        n = cls.__names__
        return (
            sa.PrimaryKeyConstraint("node_id", name=n.node("pkey")),
            sa.Index(n.node("last_seen_ix"), "last_seen_at"),
        )


@dataclass(frozen=True, eq=False)
class Models:
    """The mapped classes and tables of one installation. ``build_models`` makes one per
    ``Names``, so identity is equality (and hashing one, in every hot-path cache key, is cheap)."""

    names: Names
    metadata: sa.MetaData
    ScheduledJob: type[ScheduledJobRow]
    JobRun: type[JobRunRow]
    Node: type[NodeRow]

    @property
    def jobs(self) -> sa.Table:
        return cast(sa.Table, self.ScheduledJob.__table__)  # type: ignore[attr-defined]

    @property
    def runs(self) -> sa.Table:
        return cast(sa.Table, self.JobRun.__table__)  # type: ignore[attr-defined]

    @property
    def nodes(self) -> sa.Table:
        return cast(sa.Table, self.Node.__table__)  # type: ignore[attr-defined]


@functools.cache
def build_models(names: Names) -> Models:
    """The models for ``names``; cached, because a table can be mapped only once per MetaData."""
    metadata = sa.MetaData(schema=names.schema)
    base = cast(
        "type[DeclarativeBase]",
        type(
            "PgSchedulerBase",
            (DeclarativeBase,),
            {"metadata": metadata, "__abstract__": True, "__names__": names},
        ),
    )

    def mapped(mixin: type[Any], cls_name: str) -> Any:
        return type(cls_name, (mixin, base), {"__module__": __name__})

    return Models(
        names=names,
        metadata=metadata,
        ScheduledJob=mapped(ScheduledJobRow, "ScheduledJob"),
        JobRun=mapped(JobRunRow, "JobRun"),
        Node=mapped(NodeRow, "Node"),
    )
