"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Names are resolved when the revision runs, from the prefix and schema of the installation being
migrated: never write a literal table, index or constraint name here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
${imports if imports else ""}
from pg_scheduler.migrations import names_from_alembic

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    n = names_from_alembic(context.config)
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    n = names_from_alembic(context.config)
    ${downgrades if downgrades else "pass"}
