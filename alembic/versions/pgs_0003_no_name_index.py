"""Lighter job rows: the jobs table's index on ``name`` dropped.

Revision ID: pgs_0003
Revises: pgs_0002
Create Date: 2026-11-27

The claim and the outcome write each update a job row in a way PostgreSQL cannot keep in place
(``status`` is in the partial indexes' predicates), so every index that holds the row gets a new
entry twice per run, and once more at the enqueue. ``name_ix (name)`` served only listings by
name (``list_jobs(name=...)``, the CLI) and the orphan clean-up, which reads every row that is not
running anyway; those now read the table. Dropping it took about 11 us of server time off each
job and raised a one-node drain by about 6 % (``benchmarks.profiles.profile_drain``, 5 runs each way).
"""

from __future__ import annotations

from alembic import context, op

from pg_scheduler.migrations import names_from_alembic

revision = "pgs_0003"
down_revision = "pgs_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    n = names_from_alembic(context.config)
    op.drop_index(n.job("name_ix"), table_name=n.jobs_table, schema=n.schema)


def downgrade() -> None:
    n = names_from_alembic(context.config)
    op.create_index(n.job("name_ix"), n.jobs_table, ["name"], schema=n.schema)
