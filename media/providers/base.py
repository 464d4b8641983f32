"""What every provider media WebSocket protocol shares, pure: the error family and the
checks that turn decoded JSON into typed values. Every provider parser goes through them,
so valid JSON of the wrong shape (an array or a scalar where an object belongs,
`customParameters` as a list or a string) is a :class:`ProtocolError` naming the field,
never a crash in the handler."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class ProtocolError(ValueError):
    """A message that is not what the provider's protocol documents."""


def load_json(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc


def kind_of(value: Any) -> str:
    """JSON's name for a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def obj(value: Any, where: str) -> dict[str, Any]:
    """`value` if it is a JSON object, else a ProtocolError naming `where`."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} is {kind_of(value)}, not an object")
    return value


def need(o: dict[str, Any], key: str, where: str) -> Any:
    if key not in o:
        raise ProtocolError(f"{where}: missing {key!r}")
    return o[key]


def string(value: Any, where: str) -> str:
    """A JSON string, nothing else (an event's name)."""
    if not isinstance(value, str):
        raise ProtocolError(f"{where} is {kind_of(value)}, not a string")
    return value


def text(value: Any, where: str) -> str:
    """A JSON string (or number: providers send numbers as strings and sometimes not)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ProtocolError(f"{where} is {kind_of(value)}, not a string")
    return str(value)


def integer(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ProtocolError(f"{where}: {value!r} is not a number")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"{where}: {value!r} is not a number") from None


def params(value: Any, where: str) -> dict[str, str]:
    """Custom parameters: a JSON object of strings (numbers and booleans as their text);
    missing or null is none. A list, a string or nested objects are refused."""
    if value is None:
        return {}
    out = {}
    for k, v in obj(value, where).items():
        if isinstance(v, bool):
            out[str(k)] = "true" if v else "false"
        else:
            out[str(k)] = text(v, f"{where}.{k}")
    return out


def digit(value: Any, where: str) -> str:
    d = text(value, where)
    if len(d) != 1 or d not in "0123456789*#ABCD":
        raise ProtocolError(f"{where}: {d[:20]!r} is not a DTMF digit")
    return d


def payload(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: payload is {kind_of(value)}, not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{where}: payload is not base64: {exc}") from exc
