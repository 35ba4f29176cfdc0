"""Initial schema: scheduled jobs, job runs, nodes.

Revision ID: pgs_0001
Revises:
Create Date: 2026-11-27

Names are resolved when the revision runs, from the prefix and schema of the installation being
migrated: never write a literal table, index or constraint name here. This file is a frozen snapshot:
later schema changes are new revisions, and pg_scheduler/models.py must always equal their sum (a
test compares the two catalogs).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from pg_scheduler.migrations import names_from_alembic

revision = "pgs_0001"
down_revision = None
# Lets hosts put our revisions in their own version_locations as an independent branch.
branch_labels = ("pg_scheduler",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    n = names_from_alembic(context.config)
    op.create_table(
        n.jobs_table,
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("job_type", sa.Text, nullable=False),
        sa.Column("cron", sa.Text, nullable=True),
        sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
        sa.Column("misfire", sa.Text, nullable=False, server_default="coalesce"),
        sa.Column(
            "misfire_grace",
            sa.Interval,
            nullable=False,
            server_default=sa.text("'00:01:00'::interval"),
        ),
        sa.Column("params", postgresql.JSONB, nullable=True),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("next_run", TS, nullable=True),
        sa.Column("scheduled_at", TS, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_retries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("node_id", sa.Text, nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("last_run_at", TS, nullable=True),
        sa.Column("last_success_at", TS, nullable=True),
        sa.Column("last_failure_at", TS, nullable=True),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("execution_time_ms", sa.BigInteger, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("key", name=n.job("pkey")),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
            name=n.job("status_ck"),
        ),
        sa.CheckConstraint("job_type IN ('recurring', 'one_time')", name=n.job("job_type_ck")),
        sa.CheckConstraint("misfire IN ('coalesce', 'skip', 'all')", name=n.job("misfire_ck")),
        sa.CheckConstraint(
            "((status = 'running') = (lease_id IS NOT NULL)) AND "
            "(status <> 'running' OR (node_id IS NOT NULL AND heartbeat_at IS NOT NULL))",
            name=n.job("lease_ck"),
        ),
        sa.CheckConstraint("(job_type = 'recurring') = (cron IS NOT NULL)", name=n.job("cron_ck")),
        sa.CheckConstraint(
            "status <> 'pending' OR (next_run IS NOT NULL AND scheduled_at IS NOT NULL)",
            name=n.job("next_run_ck"),
        ),
        sa.CheckConstraint(
            "attempt >= 0 AND max_retries >= 0 AND consecutive_failures >= 0",
            name=n.job("counts_ck"),
        ),
        sa.CheckConstraint("char_length(name) BETWEEN 1 AND 200", name=n.job("name_ck")),
        schema=n.schema,
    )
    op.create_index(
        n.job("due_ix"),
        n.jobs_table,
        ["next_run"],
        schema=n.schema,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        n.job("running_ix"),
        n.jobs_table,
        ["heartbeat_at"],
        schema=n.schema,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        n.job("finished_ix"),
        n.jobs_table,
        ["finished_at"],
        schema=n.schema,
        postgresql_where=sa.text("status IN ('completed', 'failed', 'cancelled')"),
    )
    op.create_index(n.job("name_ix"), n.jobs_table, ["name"], schema=n.schema)

    op.create_table(
        n.runs_table,
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("job_key", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scheduled_at", TS, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("node_id", sa.Text, nullable=False),
        sa.Column("lease_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="running"),
        sa.Column("started_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("duration_ms", sa.BigInteger, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=n.run("pkey")),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'failed', 'cancelled', 'skipped', 'lost', "
            "'released')",
            name=n.run("status_ck"),
        ),
        sa.UniqueConstraint("lease_id", name=n.run("lease_uq")),
        sa.UniqueConstraint("job_key", "scheduled_at", "attempt", name=n.run("tick_uq")),
        schema=n.schema,
    )
    op.create_index(n.run("job_key_ix"), n.runs_table, ["job_key", "id"], schema=n.schema)
    op.create_index(n.run("finished_ix"), n.runs_table, ["finished_at"], schema=n.schema)

    op.create_table(
        n.nodes_table,
        sa.Column("node_id", sa.Text, nullable=False),
        sa.Column("node_name", sa.Text, nullable=False),
        sa.Column("hostname", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column(
            "job_names",
            postgresql.ARRAY(sa.Text),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        sa.Column("started_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("last_seen_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("stopped_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("node_id", name=n.node("pkey")),
        schema=n.schema,
    )
    op.create_index(n.node("last_seen_ix"), n.nodes_table, ["last_seen_at"], schema=n.schema)


def downgrade() -> None:
    n = names_from_alembic(context.config)
    op.drop_table(n.nodes_table, schema=n.schema)
    op.drop_table(n.runs_table, schema=n.schema)
    op.drop_table(n.jobs_table, schema=n.schema)
