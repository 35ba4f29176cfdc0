"""Table prefix and schema validation, and every identifier derived from them.

No database here: names are validated before any connection is opened, and these tests prove it by
giving every entry point an engine whose connection attempts are counted (and would fail anyway).
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from hypothesis import example, given
from hypothesis import strategies as st

from pg_scheduler import migrations
from pg_scheduler.config import SchedulerConfig
from pg_scheduler.errors import InvalidPrefixError, InvalidSchemaNameError
from pg_scheduler.naming import MAX_IDENTIFIER_BYTES, MAX_PREFIX_LENGTH, Names

REPO = Path(__file__).resolve().parents[2]

# What a derived name may look like: unquoted-safe lower-case ASCII (the channel also has a dot
# between schema and prefix; the dialect quotes it wherever it reaches SQL).
IDENTIFIER_RE = re.compile(r"[a-z_][a-z0-9_]*")
CHANNEL_RE = re.compile(r"[a-z_][a-z0-9_.]*")

HOSTILE_PREFIXES = [
    'x"; drop table y; --',
    "a-b",
    "A",
    "App_",
    "1abc",
    "_abc",
    "é",
    "aé_",
    "a b",
    "a\x00",
    "a\n",
    "a_\n",
    "a" * 64,
    "a" * (MAX_PREFIX_LENGTH + 1),
    "; DROP",
    "a;",
    "a.b_",
    "a'b",
    'a"',
    "\u0430_",  # Cyrillic a: looks like ASCII, is not
]

HOSTILE_SCHEMAS = [
    'x"; drop table y; --',
    "",
    "a-b",
    "A",
    "1abc",
    "é",
    "a b",
    "a\x00",
    "a\n",
    "a" * 64,
    "; DROP",
    "a.b",
    "pg_foo",
    "pg_",
    "pg_catalog",
    "pg_toast",
]


def oracle_accepts_prefix(prefix: str) -> bool:
    """The documented rule, written independently of the implementation."""
    return prefix == "" or (
        re.fullmatch(r"[a-z][a-z0-9_]*", prefix) is not None and len(prefix) <= MAX_PREFIX_LENGTH
    )


def oracle_accepts_schema(schema: str) -> bool:
    return (
        re.fullmatch(r"[a-z_][a-z0-9_]*", schema) is not None
        and len(schema.encode()) <= MAX_IDENTIFIER_BYTES
        and not schema.startswith("pg_")
    )


def assert_valid_names(names: Names) -> None:
    identifiers = names.identifiers()
    assert len(set(identifiers)) == len(identifiers), "two derived names are equal"
    for identifier in identifiers:
        assert len(identifier.encode()) <= MAX_IDENTIFIER_BYTES, identifier
        assert IDENTIFIER_RE.fullmatch(identifier), identifier
    assert len(names.channel.encode()) <= MAX_IDENTIFIER_BYTES, names.channel
    assert CHANNEL_RE.fullmatch(names.channel), names.channel
    if names.schema is not None:
        assert IDENTIFIER_RE.fullmatch(names.schema)


# Prefixes near the rules (valid-looking, too long, upper case, punctuation) and arbitrary text.
prefix_like = st.from_regex(r"\A[a-z][a-z0-9_]{0,45}\Z")
near_misses = st.text(alphabet="abz09_-AZ\"'; .é\x00\n\u0430", max_size=45)
prefixes = st.one_of(st.just(""), prefix_like, near_misses, st.text(max_size=70))
schema_like = st.from_regex(r"\A[a-z_][a-z0-9_]{0,70}\Z")
schemas = st.one_of(schema_like, near_misses, st.text(max_size=70), st.just("pg_x"))


@given(prefixes)
@example("")
@example("a" * MAX_PREFIX_LENGTH)
@example("a" * (MAX_PREFIX_LENGTH + 1))
def test_every_accepted_prefix_yields_valid_names_and_every_rejected_one_raises(
    prefix: str,
) -> None:
    if oracle_accepts_prefix(prefix):
        assert_valid_names(Names(prefix))
    else:
        with pytest.raises(InvalidPrefixError):
            Names(prefix)


@given(schemas, prefix_like)
@example("a" * MAX_IDENTIFIER_BYTES, "a" * MAX_PREFIX_LENGTH)
@example("a" * (MAX_IDENTIFIER_BYTES + 1), "a_")
@example("pg_jobs", "a_")
def test_every_accepted_schema_yields_valid_names_and_every_rejected_one_raises(
    schema: str, prefix: str
) -> None:
    if not oracle_accepts_prefix(prefix):
        return
    if oracle_accepts_schema(schema):
        assert_valid_names(Names(prefix, schema))
    else:
        with pytest.raises(InvalidSchemaNameError):
            Names(prefix, schema)


@given(prefix_like | st.just(""), prefix_like | st.just(""))
@example("", "pg_scheduler_")
@example("a_", "a_scheduled_jobs_")
@example("a_", "a_job_runs_")
@example("a_", "a_nodes_")
def test_two_installations_in_one_schema_share_no_name(first: str, second: str) -> None:
    """Each prefix owns its tables, indexes, constraints, version table and channel."""
    if first == second or not (oracle_accepts_prefix(first) and oracle_accepts_prefix(second)):
        return
    a, b = Names(first), Names(second)
    assert not set(a.identifiers()) & set(b.identifiers())
    assert a.channel != b.channel


def test_the_longest_prefix_is_exactly_as_long_as_the_names_allow() -> None:
    longest = Names("p" * (MAX_PREFIX_LENGTH - 1) + "_")
    assert max(len(i) for i in longest.identifiers()) == MAX_IDENTIFIER_BYTES
    with pytest.raises(InvalidPrefixError, match="at most"):
        Names("p" * MAX_PREFIX_LENGTH + "_")


def test_the_empty_prefix_keeps_the_original_table_name_and_not_the_hosts_version_table() -> None:
    names = Names("")
    assert names.jobs_table == "scheduled_jobs"
    assert names.version_table != "alembic_version"
    assert "alembic_version" not in names.identifiers()


def test_custom_prefix_derives_every_name_from_it() -> None:
    names = Names("app_", "jobs")
    assert names.jobs_table == "app_scheduled_jobs"
    assert names.version_table == "app_alembic_version"
    assert all(i.startswith("app_") for i in names.identifiers())
    assert names.channel == "jobs.app_pg_scheduler"


def test_a_long_schema_and_prefix_get_a_short_stable_channel() -> None:
    schema, prefix = "s" * MAX_IDENTIFIER_BYTES, "p" * MAX_PREFIX_LENGTH
    channel = Names(prefix, schema).channel
    assert len(channel) <= MAX_IDENTIFIER_BYTES
    assert channel == Names(prefix, schema).channel
    assert channel != Names(prefix, "t" * MAX_IDENTIFIER_BYTES).channel


# ---------------------------------------------------------------- hostile input, no connection
@pytest.fixture
def connect_attempts() -> Iterator[tuple[sa.Engine, list[object]]]:
    """An engine on a port nothing listens on, recording every connection attempt."""
    engine = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:9/nowhere")
    attempts: list[object] = []
    sa.event.listen(engine, "do_connect", lambda *args: attempts.append(args))
    yield engine, attempts
    engine.dispose()


def _cli_config(**options: str) -> Config:
    cfg = Config(cmd_opts=argparse.Namespace(x=[f"{k}={v}" for k, v in options.items()]))
    return cfg


@pytest.mark.parametrize("prefix", HOSTILE_PREFIXES)
def test_hostile_prefix_raises_before_any_connection(
    prefix: str, connect_attempts: tuple[sa.Engine, list[object]]
) -> None:
    engine, attempts = connect_attempts
    with pytest.raises(InvalidPrefixError):
        Names(prefix)
    with pytest.raises(InvalidPrefixError):
        SchedulerConfig(engine=engine, table_prefix=prefix)
    with pytest.raises(InvalidPrefixError):
        migrations.upgrade(engine, table_prefix=prefix)
    with pytest.raises(InvalidPrefixError):
        migrations.downgrade(engine, table_prefix=prefix)
    with pytest.raises(InvalidPrefixError):
        migrations.current(engine, table_prefix=prefix)
    with pytest.raises(InvalidPrefixError):
        migrations.sql(table_prefix=prefix)
    with pytest.raises(InvalidPrefixError):  # `alembic -c alembic.ini -x table_prefix=...`
        migrations.names_from_alembic(_cli_config(table_prefix=prefix), own_environment=True)
    with pytest.raises(InvalidPrefixError):  # a host's `alembic -x pg_scheduler.table_prefix=...`
        migrations.names_from_alembic(_cli_config(**{"pg_scheduler.table_prefix": prefix}))
    assert attempts == []


@pytest.mark.parametrize("schema", HOSTILE_SCHEMAS)
def test_hostile_schema_raises_before_any_connection(
    schema: str, connect_attempts: tuple[sa.Engine, list[object]]
) -> None:
    engine, attempts = connect_attempts
    with pytest.raises(InvalidSchemaNameError):
        Names("app_", schema)
    with pytest.raises(InvalidSchemaNameError):
        SchedulerConfig(engine=engine, table_prefix="app_", schema=schema)
    with pytest.raises(InvalidSchemaNameError):
        migrations.upgrade(engine, table_prefix="app_", schema=schema)
    if schema:  # `-x schema=` (empty) means "no schema" on the command line
        with pytest.raises(InvalidSchemaNameError):
            migrations.names_from_alembic(_cli_config(schema=schema), own_environment=True)
    assert attempts == []


def test_alembic_options_resolve_in_order_and_a_hosts_short_x_keys_stay_the_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PG_SCHEDULER_TABLE_PREFIX", raising=False)
    monkeypatch.delenv("PG_SCHEDULER_SCHEMA", raising=False)
    host_options = {"schema": "tenant1", "table_prefix": "zz_"}

    def resolve(own: bool, ini: bool = True, **x: str) -> Names:
        cfg = _cli_config(**host_options, **x)
        if ini:
            cfg.set_main_option("pg_scheduler.table_prefix", "hb_")
        return migrations.names_from_alembic(cfg, own_environment=own)

    # Our own env.py (`alembic -c alembic.ini -x table_prefix=...` in a checkout).
    assert resolve(own=True) == Names("zz_", "tenant1")
    # A host's env.py running our revisions as a branch: its -x options are its own.
    assert resolve(own=False) == Names("hb_")
    # The namespaced -x keys win everywhere, then the ini option, then the environment.
    assert resolve(own=False, **{"pg_scheduler.table_prefix": "xx_"}) == Names("xx_")
    assert resolve(own=True, **{"pg_scheduler.schema": "jobs"}) == Names("zz_", "jobs")
    monkeypatch.setenv("PG_SCHEDULER_TABLE_PREFIX", "env_")
    assert resolve(own=False, ini=False) == Names("env_")
    assert resolve(own=False) == Names("hb_")
    # Attributes (the Python API) override everything.
    cfg = _cli_config(table_prefix="zz_")
    cfg.attributes["pg_scheduler_names"] = Names("api_")
    assert migrations.names_from_alembic(cfg, own_environment=True) == Names("api_")


@pytest.mark.parametrize("value", [None, 1, b"app_", ["app_"]])
def test_a_prefix_that_is_not_a_string_is_rejected(value: object) -> None:
    with pytest.raises(InvalidPrefixError, match="must be a string"):
        Names(value)  # type: ignore[arg-type]


def test_the_error_names_the_bad_value_and_the_rule() -> None:
    with pytest.raises(InvalidPrefixError) as info:
        Names('x"; drop table y; --')
    assert "'x\"; drop table y; --'" in str(info.value)
    assert "lower-case" in str(info.value)
    with pytest.raises(InvalidSchemaNameError, match="reserved"):
        Names("a_", "pg_foo")


# ---------------------------------------------------------------- no SQL built from text
SQL_KEYWORD = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|GRANT|REVOKE|LISTEN|NOTIFY|TRUNCATE|"
    r"WHERE|FROM|VALUES|RETURNING|SET)\b"
)
RAW_SQL_CALLS = {"text", "exec_driver_sql"}


def _literal_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
    return None


def sql_built_from_text(source: str) -> list[tuple[int, str]]:
    """(line, what) for every place that formats SQL text: f-strings, ``%``, ``.format``, ``+``
    on a literal holding a SQL keyword, and ``text()``/``exec_driver_sql()`` of a non-literal."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            literal = _literal_text(node) or ""
            if SQL_KEYWORD.search(literal) and len(node.values) > 1:
                found.append((node.lineno, f"f-string {literal.strip()[:40]!r}"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
            for side in (node.left, node.right):
                literal = _literal_text(side)
                if literal is not None and SQL_KEYWORD.search(literal):
                    op = "%" if isinstance(node.op, ast.Mod) else "+"
                    found.append((node.lineno, f"{op} on {literal.strip()[:40]!r}"))
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "format":
                literal = _literal_text(func.value)
                if literal is not None and SQL_KEYWORD.search(literal):
                    found.append((node.lineno, f".format on {literal.strip()[:40]!r}"))
            name = getattr(func, "attr", None) or getattr(func, "id", None)
            if name in RAW_SQL_CALLS and node.args:
                first = node.args[0]
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    found.append((node.lineno, f"{name}() of a non-literal"))
    return found


@pytest.mark.parametrize(
    "source",
    [
        'q = f"SELECT * FROM {table}"',
        'q = f"UPDATE {t} SET a = 1"',
        'q = "DELETE FROM jobs WHERE key = %s" % key',
        'q = "SELECT * FROM {}".format(table)',
        'q = "LISTEN " + channel',
        "conn.exec_driver_sql(statement)",
        'conn.execute(sa.text(f"DROP TABLE {name}"))',
        "op.execute(sa.text(sql))",
    ],
)
def test_the_sql_text_detector_flags_formatted_sql(source: str) -> None:
    assert sql_built_from_text(source)


@pytest.mark.parametrize(
    "source",
    [
        'q = sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))")',
        'conn.exec_driver_sql("SHOW server_version")',
        'msg = f"cannot upgrade {table}: permission denied"',
        'log.info("claimed %s jobs", n)',
    ],
)
def test_the_sql_text_detector_lets_bound_parameters_and_messages_pass(source: str) -> None:
    assert sql_built_from_text(source) == []


def test_no_module_builds_sql_from_formatted_text() -> None:
    """Identifiers reach SQL through SQLAlchemy objects; values through bound parameters."""
    # The package and the Alembic revisions (top-level alembic/, shipped as pg_scheduler/_alembic).
    sources = sorted([*(REPO / "pg_scheduler").rglob("*.py"), *(REPO / "alembic").rglob("*.py")])
    assert len(sources) > 10
    assert any(path.parent.name == "versions" for path in sources)
    offenders = []
    for path in sources:
        source = path.read_text(encoding="utf-8")
        for line, what in sql_built_from_text(source):
            offenders.append((path.relative_to(REPO).as_posix(), line, what))
    # The one documented exception: LISTEN takes an identifier, not a bind parameter, and is built
    # from a name the dialect's preparer quoted.
    allowed = [
        o for o in offenders if o[0] == "pg_scheduler/runtime/listen.py" and o[2] == "+ on 'LISTEN'"
    ]
    assert len(allowed) == 1, offenders
    listen_line = (
        (REPO / "pg_scheduler/runtime/listen.py").read_text().splitlines()[allowed[0][1] - 1]
    )
    assert "quote_identifier(" in listen_line
    assert [o for o in offenders if o not in allowed] == []


def test_the_public_schema_and_the_default_share_a_channel_and_a_lock() -> None:
    """``schema="public"`` and no schema address the same tables on a default search path: a
    producer configured one way must wake nodes configured the other way."""
    for prefix in ("", "app_"):
        assert Names(prefix, "public").channel == Names(prefix, None).channel
        assert Names(prefix, "public").advisory_lock_key == Names(prefix, None).advisory_lock_key
    assert Names("", "jobs").channel != Names("", None).channel
