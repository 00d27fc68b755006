"""The Ruby side of the bridge tests: the storage service, the shipped plugin, a real Ruby.

The storage service itself is :class:`tests.cluster.bridge_client.Service`;
:func:`install` puts the shipped plugin into a directory laid out as Omejdn's
(with ``omejdn-pg bridge install``, as an operator does); :class:`RubyDriver`
runs ``tests/cluster/ruby/drive.rb`` — the plugin inside a stand-in of Omejdn's
``PluginLoader`` — and sends it one JSON command per line. A missing ``ruby``
fails the test that needs it with the reason, as ``.ci/run`` installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import secrets
from tests.kits.commands import ok, omejdn_pg

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "drive.rb"


def ruby() -> str:
    """The ``ruby`` executable, or the test fails saying how to get one."""
    found = shutil.which("ruby")
    if found is None:
        pytest.fail("ruby is not installed: `apt-get install ruby` (.ci/run does)")
    return found


def install(omejdn_dir: Path) -> Path:
    """A directory laid out as Omejdn's, with the plugin installed by ``omejdn-pg bridge``."""
    (omejdn_dir / "lib").mkdir(parents=True, exist_ok=True)
    (omejdn_dir / "omejdn.rb").write_text("# stand-in\n")
    (omejdn_dir / "lib" / "plugins.rb").write_text("# stand-in\n")
    ok(omejdn_pg("bridge", "install", str(omejdn_dir)))
    return omejdn_dir / "plugins"


def omejdn_plugins(
    path: Path, socket_path: Path, *, timeout: float = 5, cache: bool = True
) -> Path:
    """Omejdn's plugin file, as the README gives it."""
    path.write_text(
        "plugins:\n"
        "  omejdn_pg:\n"
        f"    socket: {socket_path}\n"
        f"    timeout: {timeout}\n"
        f"    cache: {'true' if cache else 'false'}\n"
        "deactivate_defaults: [config, keys, client, user]\n"
    )
    return path


class RubyError(Exception):
    """What the plugin raised inside Ruby."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error['class']}: {error['message']}")
        self.error_class: str = error["class"]
        self.message: str = error["message"]
        self.remote_class: str | None = error.get("remote_class")


class RubyDriver:
    """``ruby tests/cluster/ruby/drive.rb``: the shipped plugin inside the PluginLoader stand-in."""

    def __init__(
        self,
        plugins_dir: Path,
        plugin_yml: Path,
        *,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMEJDN")}
        env["OMEJDN_PLUGINS"] = str(plugin_yml)
        env["OMEJDN_PG_PLUGIN_DIR"] = str(plugins_dir)
        self.process = subprocess.Popen(
            [ruby(), str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=preexec,
        )

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            assert self.process.stderr is not None
            raise AssertionError(f"ruby ended: {self.process.stderr.read().decode()}")
        answer: dict[str, Any] = json.loads(line)
        secrets.said(line.decode())
        return answer

    def command(self, command: dict[str, Any]) -> dict[str, Any]:
        self.send(command)
        return self.receive()

    def fire(self, event: str, **locals_: Any) -> list[Any]:
        """Every listener's answer to ``event``; :class:`RubyError` when the plugin raised."""
        answer = self.command({"fire": event, "locals": locals_})
        if "error" in answer:
            raise RubyError(answer["error"])
        values: list[Any] = answer["values"]
        return values

    def first(self, event: str, **locals_: Any) -> Any:
        (value,) = self.fire(event, **locals_)
        return value

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RubyDriver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
