"""Poison params refused by ``encode_params`` on its own, with an error that names the problem.
Through the repository, with the database: ``tests/db/test_params.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pg_scheduler.errors import PayloadNotJSONError
from pg_scheduler.params import encode_params
from tests.support.poison import BAD_PARAMS, circular, nested


@pytest.mark.parametrize("make", BAD_PARAMS)
def test_params_that_are_not_plain_json_are_refused(make: Callable[[], Any]) -> None:
    with pytest.raises(PayloadNotJSONError):
        encode_params(make())


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: float("nan"), "NaN or infinity"),
        (circular, "Circular reference"),
        (lambda: {"s": "\ud800"}, "lone surrogate"),
        (lambda: {"s": "\x00"}, "NUL"),
        (lambda: nested(100_000), "nested too deeply"),
        (lambda: {1, 2}, "not JSON-serialisable"),
    ],
)
def test_the_refusal_names_the_problem(make: Callable[[], Any], reason: str) -> None:
    with pytest.raises(PayloadNotJSONError, match=reason):
        encode_params(make())
