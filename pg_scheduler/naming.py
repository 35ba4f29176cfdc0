"""Every identifier the library puts into the database, derived from one validated (prefix, schema).

The prefix and schema are validated here, once, before any connection is opened; every table, index,
constraint, the NOTIFY channel and the Alembic version table are derived from them, so models,
migrations and run-time statements can never disagree about a name. Identifiers reach SQL only
through SQLAlchemy ``Table`` objects (which quote them), never through formatted SQL text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import InvalidJobNameError, InvalidPrefixError, InvalidSchemaNameError

#: PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN - 1), with only a NOTICE,
#: which could make two of our names collide; we refuse such names instead.
MAX_IDENTIFIER_BYTES = 63

#: Longest job name accepted (also enforced by a CHECK constraint).
MAX_JOB_NAME_LENGTH = 200

_PREFIX_RE = re.compile(r"[a-z][a-z0-9_]*")
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]*")

# Suffixes appended to a table name to name its constraints and indexes. Kept short and explicit
# (rather than generated from column lists) so the longest derived name, and therefore the longest
# allowed prefix, is known.
_JOB_SUFFIXES = (
    "pkey",
    "status_ck",
    "job_type_ck",
    "misfire_ck",
    "lease_ck",
    "cron_ck",
    "next_run_ck",
    "counts_ck",
    "name_ck",
    "due_ix",
    "running_ix",
    "finished_ix",
    "name_ix",
    # Domains (pgs_0005): the types of the columns whose one-column rule they carry.
    "status_t",
    "job_type_t",
    "misfire_t",
    "count_t",
    "name_t",
)
_RUN_SUFFIXES = (
    "pkey",
    "status_ck",
    "lease_uq",
    "tick_uq",
    "tick_ix",
    "job_key_ix",
    "finished_ix",
    "id_seq",
)
_NODE_SUFFIXES = ("pkey", "last_seen_ix")


@dataclass(frozen=True)
class Names:
    """The validated table prefix and schema, and every database identifier derived from them.

    ``prefix=""`` keeps the original library's table name, ``scheduled_jobs``. Otherwise the prefix
    is lower-case ASCII letters, digits and underscores, starting with a letter, and short enough
    that the longest derived name fits PostgreSQL's 63-byte identifiers.
    """

    prefix: str = ""
    schema: str | None = None

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        if self.schema is not None:
            validate_schema(self.schema)

    # -- tables --------------------------------------------------------------------------------
    @property
    def jobs_table(self) -> str:
        return f"{self.prefix}scheduled_jobs"

    @property
    def runs_table(self) -> str:
        return f"{self.prefix}job_runs"

    @property
    def nodes_table(self) -> str:
        return f"{self.prefix}nodes"

    @property
    def version_table(self) -> str:
        """Our own Alembic version table; never the host application's ``alembic_version``."""
        if self.prefix:
            return f"{self.prefix}alembic_version"
        # With the empty prefix, "{prefix}alembic_version" would be the host's own version table.
        # The replacement must not end in "alembic_version" either: "pg_scheduler_alembic_version"
        # is also what the prefix "pg_scheduler_" derives, and two installations sharing a version
        # table would each believe the other's tables are theirs (the second install a no-op).
        return "alembic_version_pg_scheduler"

    # -- constraints and indexes ---------------------------------------------------------------
    def job(self, suffix: str) -> str:
        """Name of a constraint, index or column domain of the jobs table, e.g. ``job("due_ix")``."""
        if suffix not in _JOB_SUFFIXES:
            raise KeyError(suffix)
        return f"{self.jobs_table}_{suffix}"

    def run(self, suffix: str) -> str:
        """Name of a constraint or index of the runs table."""
        if suffix not in _RUN_SUFFIXES:
            raise KeyError(suffix)
        return f"{self.runs_table}_{suffix}"

    def node(self, suffix: str) -> str:
        """Name of a constraint or index of the nodes table."""
        if suffix not in _NODE_SUFFIXES:
            raise KeyError(suffix)
        return f"{self.nodes_table}_{suffix}"

    # -- other derived names -------------------------------------------------------------------
    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel that wakes the nodes of this installation."""
        scope = f"{self._scope}.{self.prefix}" if self._scope else self.prefix
        name = f"{scope}pg_scheduler"
        if len(name) <= MAX_IDENTIFIER_BYTES:
            return name
        # pg_notify() raises on channel names of 64 bytes or more (LISTEN silently truncates, so the
        # two would not even agree); a long schema plus prefix gets a stable digest instead.
        digest = hashlib.sha256(scope.encode()).hexdigest()[:24]
        return f"pg_scheduler_{digest}"

    @property
    def advisory_lock_key(self) -> str:
        """Text hashed into the advisory lock that serialises migrations of this installation."""
        return f"pg_scheduler:{self._scope or ''}:{self.prefix}"

    @property
    def _scope(self) -> str | None:
        """The schema as the channel and the lock key name it: ``"public"``, PostgreSQL's default
        schema, is named as no schema at all, so that a node configured with ``schema="public"``
        and one left on the default search path (the same tables) wake each other."""
        return None if self.schema == "public" else self.schema

    def qualified(self, table: str) -> str:
        """``schema.table`` for messages and logs (never for SQL text)."""
        return f"{self.schema}.{table}" if self.schema else table

    def identifiers(self) -> tuple[str, ...]:
        """Every identifier this installation creates, for validation and tests."""
        return (
            self.jobs_table,
            self.runs_table,
            self.nodes_table,
            self.version_table,
            f"{self.version_table}_pkc",
            *(self.job(s) for s in _JOB_SUFFIXES),
            *(self.run(s) for s in _RUN_SUFFIXES),
            *(self.node(s) for s in _NODE_SUFFIXES),
        )


def _longest_suffix() -> int:
    return max(
        len("scheduled_jobs_") + max(len(s) for s in _JOB_SUFFIXES),
        len("job_runs_") + max(len(s) for s in _RUN_SUFFIXES),
        len("nodes_") + max(len(s) for s in _NODE_SUFFIXES),
        len("alembic_version_pkc"),
    )


#: Longest prefix accepted: the longest derived name must still fit in 63 bytes.
MAX_PREFIX_LENGTH = MAX_IDENTIFIER_BYTES - _longest_suffix()


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is an allowed table prefix, else raise ``InvalidPrefixError``."""
    if not isinstance(prefix, str):
        raise InvalidPrefixError(f"table prefix must be a string, got {type(prefix).__name__}")
    if prefix == "":
        return prefix
    if _PREFIX_RE.fullmatch(prefix) is None:
        raise InvalidPrefixError(
            f"invalid table prefix {prefix!r}: use lower-case ASCII letters, digits and underscores, "
            "starting with a letter (for example 'app_')"
        )
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise InvalidPrefixError(
            f"table prefix {prefix!r} is {len(prefix)} characters; at most {MAX_PREFIX_LENGTH} fit, "
            f"because derived names such as {prefix}scheduled_jobs_job_type_ck must stay within "
            f"PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte identifiers"
        )
    return prefix


def validate_schema(schema: object) -> str:
    """Return ``schema`` if it is an allowed PostgreSQL schema name, else raise."""
    if not isinstance(schema, str):
        raise InvalidSchemaNameError(f"schema must be a string, got {type(schema).__name__}")
    if _SCHEMA_RE.fullmatch(schema) is None:
        raise InvalidSchemaNameError(
            f"invalid schema name {schema!r}: use lower-case ASCII letters, digits and underscores, "
            "not starting with a digit"
        )
    if len(schema) > MAX_IDENTIFIER_BYTES:
        raise InvalidSchemaNameError(
            f"schema name {schema!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES} bytes"
        )
    if schema.startswith("pg_"):
        raise InvalidSchemaNameError(
            f"invalid schema name {schema!r}: names starting with 'pg_' are reserved by PostgreSQL"
        )
    return schema


_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")
# Names already found valid: an application enqueues the same few names over and over.
_VALID_JOB_NAMES: set[str] = set()
_MAX_REMEMBERED = 4096


def validate_job_name(name: object) -> str:
    """Return ``name`` if it can name a job, else raise ``InvalidJobNameError``.

    Job names are data (bound parameters), so any printable text is fine; we refuse what PostgreSQL
    cannot store (NUL), what would make keys ambiguous (``#`` separates a one-time job's name from
    its run id) and what would make logs lie (control characters such as newlines).
    """
    if not isinstance(name, str):
        raise InvalidJobNameError(f"job name must be a string, got {type(name).__name__}")
    if name in _VALID_JOB_NAMES:
        return name
    if not name.strip():
        raise InvalidJobNameError("job name cannot be empty")
    if len(name) > MAX_JOB_NAME_LENGTH:
        raise InvalidJobNameError(
            f"job name {name[:40]!r}... is {len(name)} characters; at most {MAX_JOB_NAME_LENGTH}"
        )
    if "#" in name:
        raise InvalidJobNameError(
            f"job name {name!r} contains '#', which separates a one-time job's name from its run id"
        )
    if _CONTROL_CHARACTER.search(name):
        raise InvalidJobNameError(f"job name {name!r} contains a control character (NUL, newline…)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a bad decode upstream) cannot be sent to PostgreSQL at all.
        raise InvalidJobNameError(f"job name {name!r} is not valid Unicode text") from None
    if len(_VALID_JOB_NAMES) >= _MAX_REMEMBERED:
        _VALID_JOB_NAMES.clear()
    _VALID_JOB_NAMES.add(name)
    return name
