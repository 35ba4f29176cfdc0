"""``pg_scheduler.embedded``: bad arguments are refused before anything is created."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pg_scheduler import embedded


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cleanup": "keep"}, "cleanup must be one of ('stop', 'delete', None), not 'keep'"),
        ({"driver": "sqlite"}, "driver must be one of"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_created(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    data_dir = tmp_path / "pg"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        embedded.start(data_dir, **kwargs)
    assert not data_dir.exists()
