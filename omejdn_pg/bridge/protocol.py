"""The storage service's wire protocol: JSON-RPC 2.0, one JSON object per line.

A standard framing rather than an invented one, so the Ruby side needs only
its standard library (``socket``, ``json``) and a person can speak it with
``socat``. The cost of text over a binary encoding is small next to a
PostgreSQL round trip, and most answers (configuration sections, key sets)
are JSON already. Lines are bounded (:data:`MAX_LINE`): a request past the
bound is refused and its connection closed, since nothing after it can be
trusted to start a new line.

Errors carry the package's exception class (``data.class``), so a plugin can
tell ``StorageUnavailable`` from ``AlreadyExists``; the message is the
package error's own, which never holds a secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
MAX_LINE: Final = 16 * 1024 * 1024
"""Longest request line accepted, in bytes (16 MiB): far above any real event."""

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
STORAGE_ERROR: Final = -32000
"""An error of the package (``data.class`` names it, e.g. ``StorageUnavailable``)."""


class ProtocolError(Exception):
    """A JSON-RPC error to answer with: its code, its message and the error class it stands for."""

    def __init__(self, code: int, message: str, error_class: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error_class = error_class


@dataclass(frozen=True)
class Request:
    id: Any
    """The request's ``id`` (None for a notification, which gets no answer)."""
    method: str
    params: dict[str, Any]


def _dumps(value: Any) -> bytes:
    # No raw newline can appear: json escapes control characters inside strings.
    # NaN and infinities are not JSON: Ruby's parser would refuse the line.
    return (
        json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"
    ).encode()


def decode_request(line: bytes) -> Request:
    """The request on ``line``; :class:`ProtocolError` (with the id when one was read)."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(PARSE_ERROR, f"not a JSON line: {exc}") from None
    except RecursionError:
        raise ProtocolError(PARSE_ERROR, "not a JSON line: nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError(INVALID_REQUEST, "a request must be a JSON object")
    request_id = message.get("id")
    if message.get("jsonrpc") != "2.0":
        raise RequestError(request_id, INVALID_REQUEST, 'a request needs "jsonrpc": "2.0"')
    method = message.get("method")
    if not isinstance(method, str) or not method:
        raise RequestError(request_id, INVALID_REQUEST, "a request needs a method name")
    params = message.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(request_id, INVALID_PARAMS, f"{method}: params must be an object")
    return Request(request_id, method, params)


class RequestError(ProtocolError):
    """A :class:`ProtocolError` about a request whose ``id`` could be read."""

    def __init__(
        self, request_id: Any, code: int, message: str, error_class: str | None = None
    ) -> None:
        super().__init__(code, message, error_class)
        self.request_id = request_id


def result(request_id: Any, value: Any) -> bytes:
    return _dumps({"jsonrpc": "2.0", "id": request_id, "result": value})


def error(request_id: Any, code: int, message: str, error_class: str | None = None) -> bytes:
    body: dict[str, Any] = {"code": code, "message": message}
    if error_class is not None:
        body["data"] = {"class": error_class}
    return _dumps({"jsonrpc": "2.0", "id": request_id, "error": body})


def notification(method: str, params: dict[str, Any]) -> bytes:
    return _dumps({"jsonrpc": "2.0", "method": method, "params": params})


def request(request_id: Any, method: str, params: dict[str, Any]) -> bytes:
    """A request line (the service's ``--check`` and the tests' client send these)."""
    return _dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
