"""Job params that are not plain JSON: each must be refused before any SQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest


def circular() -> Any:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


class Opaque:
    pass


BAD_PARAMS: list[Any] = [
    pytest.param(Opaque, id="object"),
    pytest.param(lambda: {"when": dt.datetime.now(dt.timezone.utc)}, id="datetime"),
    pytest.param(lambda: {1, 2}, id="set"),
    pytest.param(lambda: {"deep": [{"x": {3}}]}, id="nested-set"),
    pytest.param(lambda: b"bytes", id="bytes"),
    pytest.param(lambda: {(1, 2): "tuple key"}, id="tuple-key"),
    pytest.param(lambda: float("nan"), id="nan"),
    pytest.param(lambda: {"x": float("inf")}, id="infinity"),
    pytest.param(lambda: [float("-inf")], id="minus-infinity"),
    pytest.param(lambda: {"s": "a\x00b"}, id="nul-in-string"),
    pytest.param(lambda: {"a\x00": 1}, id="nul-in-key"),
    pytest.param(lambda: ["\\\x00"], id="nul-after-backslash"),
    pytest.param(lambda: {"s": "\ud800"}, id="lone-surrogate"),
    pytest.param(lambda: {"\udfff": 1}, id="lone-surrogate-key"),
    pytest.param(circular, id="circular"),
    pytest.param(lambda: 10**5000, id="integer-too-long"),
    pytest.param(lambda: nested(100_000), id="nested-100000"),
]
