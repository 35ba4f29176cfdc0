"""Lost runs counted apart from attempts, and retries the handler decides.

Revision ID: pgs_0006
Revises: pgs_0005
Create Date: 2026-12-07

Three changes, all for the outcome rules of issue 18 (README "Outcomes", DESIGN's state machine):

- ``lost_leases`` on the jobs table: how many runs of the current run request (one-time) or tick
  (recurring) were lost in a row (their node died, hung or was cut off). A lost run is not a
  failure and no longer uses up an attempt; this count bounds a job that takes its node down on
  every run. Added as a plain ``integer`` with a constant default (no rewrite), then typed by the
  installation's ``count_t`` domain. A column taking a domain that has a check is rewritten, so
  the domain's check is dropped for that step and added back NOT VALID, then validated by a scan
  (all in the migration's one transaction, with the table locked).
- ``max_retries`` may be NULL: a job enqueued without ``retries`` takes its handler's, resolved by
  the node that runs it. Dropping NOT NULL touches no row.
- The runs table's ``tick_uq (job_key, scheduled_at, attempt)`` becomes the plain index ``tick_ix``
  on the same columns: a run handed back or lost and run again keeps its attempt number, so one
  attempt of one tick may now have several run rows (one ``lost``/``released``, then the rerun).
  The job row's fenced transitions keep a tick from running twice at once; the index still orders
  a job's history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from pg_scheduler.migrations import names_from_alembic

revision = "pgs_0006"
down_revision = "pgs_0005"
branch_labels = None
depends_on = None


def _count_domain() -> postgresql.DOMAIN:
    n = names_from_alembic(context.config)
    return postgresql.DOMAIN(n.job("count_t"), sa.Integer, schema=n.schema)


def _on_count_domain(statement: str) -> sa.DDL:
    """``statement`` with ``%(domain)s`` naming this installation's ``count_t`` domain and
    ``%(name)s`` its check, both quoted by the dialect's preparer."""
    n = names_from_alembic(context.config)
    preparer = op.get_context().dialect.identifier_preparer
    names = {
        "domain": preparer.format_type(_count_domain()),
        "name": preparer.quote(n.job("counts_ck")),
    }
    return sa.DDL(statement, context=names)  # type: ignore[no-untyped-call]


def upgrade() -> None:
    n = names_from_alembic(context.config)
    op.add_column(
        n.jobs_table,
        sa.Column("lost_leases", sa.Integer, nullable=False, server_default="0"),
        schema=n.schema,
    )
    # Written out, not imported from the models: the check pgs_0005 gave the domain.
    op.execute(_on_count_domain("ALTER DOMAIN %(domain)s DROP CONSTRAINT %(name)s"))
    op.alter_column(n.jobs_table, "lost_leases", type_=_count_domain(), schema=n.schema)
    op.execute(
        _on_count_domain(
            "ALTER DOMAIN %(domain)s ADD CONSTRAINT %(name)s CHECK (VALUE >= 0) NOT VALID"
        )
    )
    op.execute(_on_count_domain("ALTER DOMAIN %(domain)s VALIDATE CONSTRAINT %(name)s"))
    op.alter_column(n.jobs_table, "max_retries", nullable=True, schema=n.schema)
    op.drop_constraint(n.run("tick_uq"), n.runs_table, schema=n.schema, type_="unique")
    op.create_index(
        n.run("tick_ix"), n.runs_table, ["job_key", "scheduled_at", "attempt"], schema=n.schema
    )


def downgrade() -> None:
    n = names_from_alembic(context.config)
    op.drop_index(n.run("tick_ix"), table_name=n.runs_table, schema=n.schema)
    # Rows a rerun left with the same attempt of the same tick: keep the newest (by id), since
    # the older ones are the lost or released runs it replaced.
    runs = sa.table(
        n.runs_table,
        sa.column("id", sa.BigInteger),
        sa.column("job_key", sa.Text),
        sa.column("scheduled_at", sa.DateTime(timezone=True)),
        sa.column("attempt", sa.Integer),
        schema=n.schema,
    )
    newer = runs.alias("newer")
    op.execute(
        sa.delete(runs).where(
            sa.exists().where(
                newer.c.job_key == runs.c.job_key,
                newer.c.scheduled_at == runs.c.scheduled_at,
                newer.c.attempt == runs.c.attempt,
                newer.c.id > runs.c.id,
            )
        )
    )
    op.create_unique_constraint(
        n.run("tick_uq"), n.runs_table, ["job_key", "scheduled_at", "attempt"], schema=n.schema
    )
    jobs = sa.table(n.jobs_table, sa.column("max_retries", sa.Integer), schema=n.schema)
    op.execute(sa.update(jobs).where(jobs.c.max_retries.is_(None)).values(max_retries=0))
    op.alter_column(n.jobs_table, "max_retries", nullable=False, schema=n.schema)
    op.drop_column(n.jobs_table, "lost_leases", schema=n.schema)
