"""Lighter run history: two indexes of the runs table dropped.

Revision ID: pgs_0002
Revises: pgs_0001
Create Date: 2026-11-27

Every attempt inserts a run row when it is claimed and updates it when it ends, so each index of
the runs table is written twice per job; these two served only reads that other indexes serve:

- ``job_key_ix (job_key, id)``: a job's history is read newest first through ``tick_uq
  (job_key, scheduled_at, attempt)``, which also orders it (the tick, then the attempt).
- ``finished_ix (finished_at)``: retention pruning walks the primary key from the oldest run.

Dropping them raised a one-node drain of no-op jobs by about 8 % (benchmarks.profiles.profile_drain).
"""

from __future__ import annotations

from alembic import context, op

from pg_scheduler.migrations import names_from_alembic

revision = "pgs_0002"
down_revision = "pgs_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    n = names_from_alembic(context.config)
    op.drop_index(n.run("job_key_ix"), table_name=n.runs_table, schema=n.schema)
    op.drop_index(n.run("finished_ix"), table_name=n.runs_table, schema=n.schema)


def downgrade() -> None:
    n = names_from_alembic(context.config)
    op.create_index(n.run("job_key_ix"), n.runs_table, ["job_key", "id"], schema=n.schema)
    op.create_index(n.run("finished_ix"), n.runs_table, ["finished_at"], schema=n.schema)
