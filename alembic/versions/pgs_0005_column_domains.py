"""The jobs table's one-column rules carried by domains instead of table CHECKs.

Revision ID: pgs_0005
Revises: pgs_0004
Create Date: 2026-11-28

PostgreSQL rebuilds a table's CHECK constraints from their stored expression trees in every
statement that writes the table, so a one-row INSERT (an enqueue) paid for all eight each time:
24-32 us of a ~300 us durable enqueue (``benchmarks.profiles.profile_insert_cost``). A domain's check is
prepared once per session, in the type cache. So the five rules that read one column (status,
job type, misfire policy, the three counts, the name's length) move onto domains over the
columns' types, under the same constraint names; the three that relate columns stay on the table.
The rules are unchanged: a bad value is still refused with SQLSTATE 23514 naming the constraint,
and clients still read ``text`` and ``integer`` (PostgreSQL reports a domain column as its base
type). About a third of the rules' cost per statement goes: ``python -m
benchmarks.profiles.profile_insert_cost --rounds 40 --batch 50 --temporary`` gave 141 -> 130 us per INSERT
(111 with no rule at all), 299 -> 290 us durable.

No table rewrite: each domain is created without its check, the columns take the domain (which
keeps every row in place; the three partial indexes whose predicate reads ``status`` are
rebuilt), then the checks are added NOT VALID and validated by a scan, the table's own checks
having held the same rules until then.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.named_types import CreateDomainType, DropDomainType

from pg_scheduler.migrations import names_from_alembic

revision = "pgs_0005"
down_revision = "pgs_0004"
branch_labels = None
depends_on = None

# Written out, not imported from the models: a revision says what it did when it was made.
# (models.JOB_DOMAINS must agree; the catalog comparison in the tests checks it.)
# (domain suffix, base type, check suffix, the domain's check added NOT VALID, the table check it
# replaces, the columns that take the domain)
DOMAINS: tuple[tuple[str, Any, str, str, str, tuple[str, ...]], ...] = (
    (
        "status_t",
        sa.Text,
        "status_ck",
        "ALTER DOMAIN %(domain)s ADD CONSTRAINT %(name)s"
        " CHECK (VALUE IN ('pending', 'running', 'completed', 'failed', 'cancelled')) NOT VALID",
        "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
        ("status",),
    ),
    (
        "job_type_t",
        sa.Text,
        "job_type_ck",
        "ALTER DOMAIN %(domain)s ADD CONSTRAINT %(name)s"
        " CHECK (VALUE IN ('recurring', 'one_time')) NOT VALID",
        "job_type IN ('recurring', 'one_time')",
        ("job_type",),
    ),
    (
        "misfire_t",
        sa.Text,
        "misfire_ck",
        "ALTER DOMAIN %(domain)s ADD CONSTRAINT %(name)s"
        " CHECK (VALUE IN ('coalesce', 'skip', 'all')) NOT VALID",
        "misfire IN ('coalesce', 'skip', 'all')",
        ("misfire",),
    ),
    (
        "count_t",
        sa.Integer,
        "counts_ck",
        "ALTER DOMAIN %(domain)s ADD CONSTRAINT %(name)s CHECK (VALUE >= 0) NOT VALID",
        "attempt >= 0 AND max_retries >= 0 AND consecutive_failures >= 0",
        ("attempt", "max_retries", "consecutive_failures"),
    ),
    (
        "name_t",
        sa.Text,
        "name_ck",
        "ALTER DOMAIN %(domain)s ADD CONSTRAINT %(name)s"
        " CHECK (char_length(VALUE) BETWEEN 1 AND 200) NOT VALID",
        "char_length(name) BETWEEN 1 AND 200",
        ("name",),
    ),
)
VALIDATE = "ALTER DOMAIN %(domain)s VALIDATE CONSTRAINT %(name)s"


def _domain(suffix: str, base: Any) -> postgresql.DOMAIN:
    n = names_from_alembic(context.config)
    return postgresql.DOMAIN(n.job(suffix), base, schema=n.schema)


def _on_domain(statement: str, suffix: str, name: str) -> sa.DDL:
    """``statement`` with ``%(domain)s`` naming this installation's domain ``suffix`` and
    ``%(name)s`` the constraint ``name``, both quoted by the dialect's preparer."""
    preparer = op.get_context().dialect.identifier_preparer
    context_ = {
        "domain": preparer.format_type(_domain(suffix, sa.Text)),
        "name": preparer.quote(name),
    }
    return sa.DDL(statement, context=context_)  # type: ignore[no-untyped-call]


def upgrade() -> None:
    n = names_from_alembic(context.config)
    for suffix, base, _, _, _, _ in DOMAINS:
        op.execute(CreateDomainType(_domain(suffix, base)))
    # The table's checks go first: a column whose type changes has its checks re-validated.
    # Nothing else writes the table meanwhile: the first ALTER TABLE holds it exclusively.
    for _, _, check_suffix, _, _, _ in DOMAINS:
        op.drop_constraint(n.job(check_suffix), n.jobs_table, schema=n.schema, type_="check")
    for suffix, base, _, _, _, columns in DOMAINS:
        for column in columns:
            op.alter_column(n.jobs_table, column, type_=_domain(suffix, base), schema=n.schema)
    for suffix, _, check_suffix, add, _, _ in DOMAINS:
        op.execute(_on_domain(add, suffix, n.job(check_suffix)))
        op.execute(_on_domain(VALIDATE, suffix, n.job(check_suffix)))


def downgrade() -> None:
    n = names_from_alembic(context.config)
    for _, base, _, _, _, columns in DOMAINS:
        for column in columns:
            op.alter_column(n.jobs_table, column, type_=base(), schema=n.schema)
    for suffix, base, _, _, _, _ in DOMAINS:
        op.execute(DropDomainType(_domain(suffix, base)))
    for _, _, check_suffix, _, table_check, _ in DOMAINS:
        op.create_check_constraint(n.job(check_suffix), n.jobs_table, table_check, schema=n.schema)
