"""Job parameters: plain JSON, checked and serialised once, before any SQL runs."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import PayloadNotJSONError, PayloadTooLargeError

#: Default cap on the JSON size of one job's parameters.
DEFAULT_MAX_PARAMS_BYTES = 1024 * 1024

# json.dumps writes a NUL character as \u0000; a literal backslash before "u0000" is written as
# \\u0000, so only an odd number of backslashes means a real NUL (which jsonb refuses).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def encode_params(params: Any, max_bytes: int = DEFAULT_MAX_PARAMS_BYTES) -> str:
    """Serialise ``params`` to JSON text, or raise a ``PayloadError`` saying what is wrong.

    Refused: values JSON cannot represent (objects, sets, bytes, NaN and infinities), NUL characters
    (PostgreSQL's jsonb cannot store them), nesting deep enough to exhaust the stack, and documents
    larger than ``max_bytes``. Nothing is written when this raises.
    """
    if params is None:  # the commonest case, and always valid
        return "null"
    try:
        text = json.dumps(params, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except TypeError as exc:
        raise PayloadNotJSONError(f"job parameters are not JSON-serialisable: {exc}") from exc
    except RecursionError as exc:
        raise PayloadNotJSONError(
            "job parameters are nested too deeply to serialise as JSON"
        ) from exc
    except ValueError as exc:
        # json raises ValueError for NaN/infinities, but also for circular references and for
        # integers too long to print; name the one that happened.
        what = (
            "a float JSON cannot represent (NaN or infinity)"
            if "Out of range float" in str(exc)
            else "a value JSON cannot represent"
        )
        raise PayloadNotJSONError(f"job parameters contain {what}: {exc}") from exc
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        # A lone surrogate ("\ud800") is a Python str but not Unicode text; jsonb refuses it.
        raise PayloadNotJSONError(
            f"job parameters contain a lone surrogate {text[exc.start : exc.end]!r}, "
            "which is not valid Unicode text"
        ) from exc
    if size > max_bytes:
        raise PayloadTooLargeError(size, max_bytes)
    if _NUL_ESCAPE.search(text):
        raise PayloadNotJSONError(
            "job parameters contain a NUL character (\\x00), which PostgreSQL cannot store"
        )
    return text


def decode_params(text: str | None) -> Any:
    """Parameters read back as JSON text (the claim selects them so, on every driver): a job
    without parameters, the commonest case, costs no JSON parse."""
    if text is None or text == "null":
        return None
    return json.loads(text)
