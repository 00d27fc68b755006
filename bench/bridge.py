"""The storage service's cost: an event through ``omejdn-pg serve``'s socket beside the same
event fired in-process, and a token request's events under 1, 4 and 8 client threads.

``python -m bench`` runs it as its ``bridge`` rows (:func:`measure`, on the bench's
server); ``python -m bench.bridge [--calls N] [--seconds S]`` alone starts an embedded
PostgreSQL of its own (or ``$OMEJDN_PG_BENCH_DSN``). One seeded database, the service
as a subprocess on the same plugin file as the in-process loader (read cache on, its
defaults). The client is a
minimal persistent-connection JSON-RPC client in Python, so the socket figures include
a Python client's encode and decode, not a Ruby one's. The token request is what
upstream Omejdn fires for a ``client_credentials`` grant: CLIENT_GET, CONFIGURATION_LOAD
eight times for ``omejdn`` and once for ``scope_mapping``, KEYS_LOAD.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.server import Server, start
from bench.timing import Call, interleave, throughput
from omejdn_pg import PluginLoader
from omejdn_pg.host import events
from omejdn_pg.host.events import EventBus
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.settings.connection import ConnectionSettings

OMEJDN = {f"setting_{n}": f"value {n}" for n in range(20)} | {"issuer": "https://id.example"}
SCOPES = {f"scope{n}": [f"claim{n}", f"claim{n + 1}"] for n in range(10)}


class Client:
    """One persistent connection, one request at a time (as the Ruby plugin per thread)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self.ids = itertools.count(1)
        self.call("hello", {"protocol": 1, "client": "bench"})

    def call(self, method: str, params: dict[str, Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params}
        self.sock.sendall(json.dumps(body, separators=(",", ":")).encode() + b"\n")
        reply = json.loads(self.reader.readline())
        if "error" in reply:
            raise RuntimeError(reply["error"]["message"])
        return reply["result"]


def plugin_file(path: Path, connection: ConnectionSettings, cache: str) -> Path:
    params = "".join(f"         {k}: '{v}'\n" for k, v in connection.params.items())
    path.write_text(
        "plugins:\n   postgres_backend:\n      connection:\n"
        f"{params}"
        f"      cache: {cache}\n"
        "deactivate_defaults: [config, keys, client, user]\n"
    )
    return path


def seed(loader: EventBus) -> None:
    loader.fire(events.CONFIGURATION_STORE, section="omejdn", data=OMEJDN)
    loader.fire(events.CONFIGURATION_STORE, section="scope_mapping", data=SCOPES)
    signing = KeySet([generate_key("RS256")]).to_jwks(private=True)
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=signing)
    from omejdn_pg import Client as Entity

    portal = Entity(
        metadata={
            "client_id": "portal",
            "token_endpoint_auth_method": "private_key_jwt",
            "grant_types": ["client_credentials"],
            "jwks": KeySet([generate_key("ES256")]).to_jwks(private=False),
        }
    )
    loader.fire(events.CLIENT_CREATE, client=portal, client_backend="postgres")


def in_process(loader: EventBus) -> dict[str, Callable[[], object]]:
    def config(section: str = "omejdn") -> Callable[[], object]:
        return lambda: loader.fire(events.CONFIGURATION_LOAD, section=section, fallback=None)[0]

    def client_get() -> object:
        return loader.fire(events.CLIENT_GET, client_id="portal")[0]

    def keys_load() -> object:
        return loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn", create=True)[0]

    omejdn, scopes = config(), config("scope_mapping")

    def token() -> None:
        client_get()
        for _ in range(8):
            omejdn()
        scopes()
        keys_load()

    return {
        "hello (the wire alone)": lambda: None,
        "CONFIGURATION_LOAD": omejdn,
        "CLIENT_GET": client_get,
        "KEYS_LOAD": keys_load,
        "token request (11 events)": token,
    }


def through(client: Client) -> dict[str, Callable[[], object]]:
    def config(section: str = "omejdn") -> Callable[[], object]:
        return lambda: client.call("CONFIGURATION_LOAD", {"section": section, "fallback": None})

    def client_get() -> object:
        return client.call("CLIENT_GET", {"client_id": "portal"})

    def keys_load() -> object:
        target = {"target_type": "omejdn", "target": "omejdn", "create": True}
        return client.call("KEYS_LOAD", target)

    omejdn, scopes = config(), config("scope_mapping")

    def token() -> None:
        client_get()
        for _ in range(8):
            omejdn()
        scopes()
        keys_load()

    return {
        "hello (the wire alone)": lambda: client.call("hello", {"protocol": 1}),
        "CONFIGURATION_LOAD": omejdn,
        "CLIENT_GET": client_get,
        "KEYS_LOAD": keys_load,
        "token request (11 events)": token,
    }


def wait_ready(path: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"omejdn-pg serve exited with {process.returncode}")
        try:
            Client(path)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("omejdn-pg serve did not answer")


THREADS = (1, 4, 8)
TOKEN = "token request (11 events)"


def measure(
    server: Server,
    *,
    calls: int = 3000,
    seconds: float = 3.0,
    cache: str = "true",
    threads: Sequence[int] = THREADS,
) -> dict[str, Any]:
    """The rows of ``python -m bench`` (``bridge``): each event through the socket beside
    the same event in-process, and token requests/s through the socket per thread count.

    On a database of its own on ``server``, dropped afterwards; the service runs as a
    subprocess on the same plugin file as the in-process loader.
    """
    rows: list[dict[str, Any]] = []
    throughput_rows: list[dict[str, Any]] = []
    database = server.database("bridge")
    try:
        with tempfile.TemporaryDirectory() as folder:
            config = plugin_file(Path(folder) / "plugins.yml", database, cache)
            path = str(Path(folder) / "omejdn-pg.sock")
            env = {
                k: v for k, v in os.environ.items() if k not in ("OMEJDN_PG_URL", "OMEJDN_PLUGINS")
            }
            with PluginLoader.from_files([config]) as loader:
                seed(loader)
                command = [sys.executable, "-m", "omejdn_pg", "serve", "--socket", path]
                process = subprocess.Popen([*command, "--config", str(config), "-q"], env=env)
                try:
                    wait_ready(path, process)
                    time.sleep(1.0)  # both read caches serving
                    local, remote = in_process(loader), through(Client(path))
                    for name in local:
                        count = calls if name != TOKEN else max(10, calls // 10)
                        mine, wire = interleave([local[name], remote[name]], count, 10, 50)
                        rows.append(
                            {
                                "case": name,
                                "in_process_p50_us": round(mine.median_us, 1),
                                "socket_p50_us": round(wire.median_us, 1),
                                "in_process_p99_us": round(mine.p99_us, 1),
                                "socket_p99_us": round(wire.p99_us, 1),
                            }
                        )
                    for count in threads:
                        clients = [Client(path) for _ in range(count)]

                        def token_request(i: int, c: list[Client] = clients) -> Call:
                            return through(c[i])[TOKEN]

                        done = throughput(token_request, count, seconds)
                        throughput_rows.append(
                            {
                                "threads": count,
                                "ops_per_s": round(done.ops_per_s, 1),
                                "errors": done.errors,
                            }
                        )
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(30)
    finally:
        server.drop(database)
    return {
        "client": "a Python client of the wire protocol, one persistent connection per thread",
        "cache": cache,
        "rows": rows,
        "token_requests": throughput_rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge", description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per side (3000)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per thread count")
    parser.add_argument(
        "--cache",
        default="true",
        help="the plugin file's cache: setting (true; e.g. '{client: true}')",
    )
    args = parser.parse_args(argv)
    with start() as server:
        found = measure(server, calls=args.calls, seconds=args.seconds, cache=args.cache)
    for row in found["rows"]:
        print(json.dumps(row))
    for row in found["token_requests"]:
        print(
            json.dumps(
                {"case": f"token requests/s through the socket, {row['threads']} thread(s)", **row}
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
