"""The token-endpoint load generator: pre-signed assertions, one connection per request.

Each worker thread sends ``POST /token`` (client_credentials, private_key_jwt)
with ``Connection: close`` on a fresh TCP connection and reads the answer to
the end; Thin's keep-alive is unreliable under concurrency, and a fresh
connection per request is what most OAuth clients do anyway. The assertions are
signed before the clock starts, so the generator spends its time on sockets,
not on RSA (on a 2-core machine it still takes a share of a core: the figures
are the server's throughput *with* its client beside it).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode


@dataclass(frozen=True)
class Result:
    """One cell: concurrency, seconds, answers by kind."""

    concurrency: int
    seconds: float
    ok: int
    failed: int
    statuses: dict[int, int]

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds


def request_bytes(port: int, assertion: str) -> bytes:
    body = urlencode(
        {
            "grant_type": "client_credentials",
            "scope": "omejdn:write",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
    ).encode()
    head = (
        f"POST /token HTTP/1.1\r\nHost: localhost:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body


def one(port: int, payload: bytes) -> int:
    """Send one request; its HTTP status (0 when the connection failed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(payload)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError:
        return 0
    head = b"".join(chunks)[:12]
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def hammer(port: int, assertions: list[str], concurrency: int, seconds: float) -> Result:
    """``concurrency`` workers for ``seconds``; what came back."""
    payloads = [request_bytes(port, a) for a in assertions]
    counts: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def work(offset: int) -> None:
        mine: dict[int, int] = {}
        i = offset
        while time.monotonic() < stop_at:
            status = one(port, payloads[i % len(payloads)])
            mine[status] = mine.get(status, 0) + 1
            i += concurrency
        with lock:
            for status, n in mine.items():
                counts[status] = counts.get(status, 0) + n

    started = time.monotonic()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    ok = counts.get(200, 0)
    return Result(concurrency, elapsed, ok, sum(counts.values()) - ok, dict(sorted(counts.items())))
