"""The storage service for the tests: ``omejdn-pg serve`` as a child process, and a tiny
client of its wire protocol (the real client is the Ruby plugin): one connection, one
request at a time, JSON-RPC 2.0 lines."""

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

from omejdn_pg.settings.connection import ConnectionSettings
from tests import secrets
from tests.kits.commands import CLEAN_ENV, REPO
from tests.kits.plugins import plugin_file

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
        self,
        path: str | Path,
        *,
        hello: bool = True,
        timeout: float = 30,
        protocol: int = PROTOCOL,
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.fspath(path))
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
    """``omejdn-pg serve --socket PATH`` in a child process of its own; what it prints is its log.

    :meth:`start` starts it and returns once it answers the protocol's hello; after
    :meth:`kill` it may be started again at the same socket, its log going on. It runs
    in the socket's folder (``python -m`` puts the working directory first on the
    path, so the repository is put on ``PYTHONPATH`` instead).
    """

    def __init__(
        self,
        socket_path: Path,
        config: Path | None,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        """``config``: the plugin file given with ``--config`` (None: none; ``env`` may name
        one in ``OMEJDN_PLUGINS``); ``args``: more options of ``serve``."""
        self.path = socket_path
        self.config = config
        self.args = args
        self.env = env or {}
        self.log_path = socket_path.parent / f"{socket_path.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> Service:
        """Starts the process and returns at once, ready or not."""
        environment = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), environment.get("PYTHONPATH")])
        )
        environment.update(self.env)
        command = [sys.executable, "-m", "omejdn_pg", "serve", "--socket", str(self.path)]
        command += [*self.args, *(["--config", str(self.config)] if self.config else [])]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.path.parent,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def start(self, timeout: float = 60) -> Service:
        """Starts the process and returns once it answers the protocol's hello."""
        self.launch()
        assert self.process is not None
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

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.log()
        return code

    def log(self) -> str:
        """Everything the service printed so far (shown to the secrets sweep)."""
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        secrets.said(text)
        return text


def service_for(
    connection: ConnectionSettings, folder: Path, *args: str, **options: Any
) -> Service:
    """The service on ``connection``, its socket and plugin file in ``folder``; ``args``: more
    options of ``serve``, ``options`` those of :func:`tests.kits.plugins.plugin_yaml` (the
    service serves every group, so none is made PostgreSQL's by default). Not started yet."""
    config = plugin_file(
        folder / "service.yml", connection, **{"postgres_by_default": False, **options}
    )
    return Service(folder / "omejdn-pg.sock", config, *args)
