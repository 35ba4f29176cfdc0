"""The exception hierarchy: every error the library raises on purpose is a ``PgSchedulerError``.

Each class's docstring is its default message; subclasses that carry data keep it as attributes so
callers can act on it without parsing text.
"""

from __future__ import annotations

from typing import Any


class PgSchedulerError(Exception):
    """pg_scheduler failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(PgSchedulerError, ValueError):
    """The scheduler configuration is invalid."""


class InvalidNameError(ConfigError):
    """A table prefix, schema or job name is not allowed."""


class InvalidPrefixError(InvalidNameError):
    """The table prefix is not allowed."""


class InvalidSchemaNameError(InvalidNameError):
    """The PostgreSQL schema name is not allowed."""


class InvalidJobNameError(InvalidNameError):
    """The job name is not allowed."""


class InvalidCronError(ConfigError):
    """The cron expression is invalid."""

    def __init__(self, expression: str, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        super().__init__(f"invalid cron expression {expression!r}: {reason}")


class InvalidTimezoneError(ConfigError):
    """The time zone is not a known IANA time zone."""

    def __init__(self, timezone: str) -> None:
        self.timezone = timezone
        super().__init__(
            f"unknown time zone {timezone!r}: expected an IANA name such as 'Europe/Berlin'"
        )


class RegistrationError(PgSchedulerError):
    """A job could not be registered."""


class DuplicateJobError(RegistrationError):
    """Another job is already registered under this name."""


class UnknownJobError(PgSchedulerError, LookupError):
    """No job with this name or key exists."""


class JobNotFoundError(UnknownJobError):
    """No job row has this key."""


class InvalidStateError(PgSchedulerError):
    """The job is not in a state that allows this operation."""


class PayloadError(PgSchedulerError, ValueError):
    """The job parameters cannot be stored."""


class PayloadNotJSONError(PayloadError):
    """The job parameters are not plain JSON."""


class PayloadTooLargeError(PayloadError):
    """The job parameters are larger than ``max_params_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"job parameters are {size} bytes of JSON, more than max_params_bytes={limit}"
        )


class SchemaError(PgSchedulerError):
    """The database schema is not usable."""


class SchemaNotInstalledError(SchemaError):
    """The pg_scheduler tables are not installed in this database."""

    def __init__(self, message: str | None = None, *, names: Any = None) -> None:
        self.names = names  # the pg_scheduler.Names whose tables are missing, when known
        super().__init__(message)


class SchemaVersionMismatchError(SchemaError):
    """The installed pg_scheduler schema is at another revision than this library expects."""


class MigrationError(SchemaError):
    """A schema migration failed."""


class DatabaseUnavailableError(PgSchedulerError):
    """The database could not be reached."""


class SchedulerStateError(PgSchedulerError, RuntimeError):
    """The scheduler is not in a state that allows this call."""


class EmbeddedPostgresError(PgSchedulerError):
    """The embedded PostgreSQL server is not available."""
