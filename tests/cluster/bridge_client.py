"""A tiny client of the storage service's wire protocol, for the tests (the real client
is the Ruby plugin): one connection, one request at a time, JSON-RPC 2.0 lines."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests import secrets
from tests.kits.commands import CLEAN_ENV

PROTOCOL = 1


class BridgeError(Exception):
    """An error answer: its JSON-RPC code, message and the package's error class."""

    def __init__(self, code: int, message: str, error_class: str | None) -> None:
        super().__init__(f"{code} {error_class}: {message}")
        self.code = code
        self.message = message
        self.error_class = error_class


class BridgeClient:
    def __init__(
        self, path: str, *, hello: bool = True, timeout: float = 30, protocol: int = PROTOCOL
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self._ids = itertools.count(1)
        if hello:
            self.hello = self.call("hello", {"protocol": protocol, "client": "tests"})

    def send_line(self, data: bytes) -> None:
        self.sock.sendall(data)

    def message(self) -> dict[str, Any]:
        """The next line from the service, parsed; EOFError when it closed the connection."""
        line = self.reader.readline()
        if not line:
            raise EOFError("the service closed the connection")
        found: dict[str, Any] = json.loads(line)
        return found

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        request_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        self.send_line(json.dumps(body).encode() + b"\n")
        return self.reply(request_id)

    def reply(self, request_id: Any = None) -> Any:
        found = self.message()
        if request_id is not None:
            assert found.get("id") == request_id, found
        if "error" in found:
            error = found["error"]
            raise BridgeError(
                error["code"], error["message"], (error.get("data") or {}).get("class")
            )
        return found["result"]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the service as a subprocess -----------------------------------------------------


class Service:
    """``omejdn-pg serve`` started as a subprocess; its stderr is its log."""

    def __init__(
        self,
        socket_path: Path,
        config: Path | None,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        """``config``: the plugin file given with ``--config`` (None: none; ``env`` may name
        one in ``OMEJDN_PLUGINS``)."""
        self.path = str(socket_path)
        self.log_path = socket_path.with_suffix(".log")
        environment = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
        environment.update(env or {})
        self._log = self.log_path.open("wb")
        command = [sys.executable, "-m", "omejdn_pg", "serve", "--socket", self.path, *args]
        if config is not None:
            command += ["--config", str(config)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=self._log, env=environment
        )

    def wait_ready(self, timeout: float = 60) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: {self.log()}")
            try:
                with BridgeClient(self.path, timeout=2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"serve did not answer within {timeout}s: {self.log()}")

    def log(self) -> str:
        text = self.log_path.read_text()
        secrets.said(text)
        return text

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        self.log()
        return code
