"""A scratch copy of upstream Omejdn, the storage service it talks to, and its Thin server.

Each run copies the Omejdn checkout (without ``.git`` and without its stored
``config/`` and ``keys/``) so the checkout itself is never written, and for
omejdn_pg installs our plugin into the copy and writes the plugin file. The
service is ``python -m omejdn_pg serve`` with this process's configuration
(``--url`` or ``$OMEJDN_PG_URL``), started here and stopped with SIGTERM. The
trade-off of copying: a few MB per run, against a checkout that stays exactly
as fetched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from omejdn_pg.cli.bridge import install_plugin

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parents[1]
PLUGIN_FILE: Final = "omejdn_pg_plugins.yml"


@dataclass(frozen=True)
class Checkouts:
    """Where upstream's two checkouts are."""

    omejdn: Path
    jwt: Path

    def missing(self) -> str | None:
        """Why a run cannot happen here, or None."""
        if not (self.omejdn / "omejdn.rb").is_file():
            return f"no Omejdn checkout at {self.omejdn} (omejdn.rb missing)"
        if not (self.jwt / "lib" / "jwt" / "jwk" / "set.rb").is_file():
            return f"no ruby-jwt >= 2.7 checkout at {self.jwt} (lib/jwt/jwk/set.rb missing)"
        if shutil.which("ruby") is None:
            return "ruby is not installed (apt-get install ruby and Omejdn's gems)"
        return None


def ruby_env(checkouts: Checkouts, **extra: str) -> dict[str, str]:
    """The environment Omejdn runs in: ruby-jwt from the checkout first on the load path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMEJDN_")}
    env["RUBYLIB"] = str(checkouts.jwt / "lib")
    env.update(extra)
    return env


def copy_checkout(checkouts: Checkouts, dest: Path) -> Path:
    """A scratch copy of the Omejdn checkout at ``dest``."""
    shutil.copytree(checkouts.omejdn, dest, ignore=shutil.ignore_patterns(".git", "config", "keys"))
    return dest


def use_omejdn_pg(run_dir: Path, socket_path: Path, *, timeout: float = 5.0) -> Path:
    """Install the plugin into ``run_dir`` and write its plugin file; the file's path."""
    install_plugin(run_dir)
    plugins = run_dir / PLUGIN_FILE
    plugins.write_text(
        yaml.safe_dump(
            {
                "plugins": {"omejdn_pg": {"socket": str(socket_path), "timeout": timeout}},
                "deactivate_defaults": ["config", "keys", "client", "user"],
            }
        )
    )
    return plugins


def wait_for(check: Iterator[bool] | None = None, *, what: str, seconds: float = 30.0) -> None:
    """Poll until ``check`` yields True, or fail naming ``what``."""
    deadline = time.monotonic() + seconds
    for ok in check or iter(()):
        if ok:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {seconds:.0f} s")
        time.sleep(0.1)
    raise RuntimeError(f"{what} stopped before it came up")


@contextlib.contextmanager
def service(socket_path: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``omejdn-pg serve`` on ``socket_path`` (migrated first), stopped with SIGTERM."""
    python = sys.executable
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    subprocess.run([python, "-m", "omejdn_pg", "migrate"], env=env, check=True, capture_output=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [python, "-m", "omejdn_pg", "serve", "--socket", str(socket_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def answering() -> Iterator[bool]:
        while process.poll() is None:
            yield socket_path.exists()

    try:
        wait_for(answering(), what=f"omejdn-pg serve (log: {log})")
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def thin(
    run_dir: Path, checkouts: Checkouts, port: int, plugins: Path | None, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Omejdn's own server (``ruby omejdn.rb``, Thin) on 127.0.0.1:``port``."""
    env = ruby_env(
        checkouts,
        OMEJDN_BIND_TO=f"127.0.0.1:{port}",
        OMEJDN_ISSUER=f"http://localhost:{port}",
        OMEJDN_ENVIRONMENT="production",
    )
    if plugins is not None:
        env["OMEJDN_PLUGINS"] = str(plugins)
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["ruby", "omejdn.rb"], cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT
        )

    def listening() -> Iterator[bool]:
        while process.poll() is None:
            with socket.socket() as s:
                yield s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening(), what=f"Omejdn on port {port} (log: {log})", seconds=60)
        yield process
    finally:
        stop(process)


def seed(
    run_dir: Path,
    checkouts: Checkouts,
    *,
    issuer: str,
    count: int,
    keyfile: Path,
    plugins: Path | None,
    private_client_key: bool,
) -> list[str]:
    """Seed the bench client and the signing key through the core; ``count`` assertions."""
    env = ruby_env(checkouts, OMEJDN_ISSUER=issuer)
    if plugins is not None:
        env["OMEJDN_PLUGINS"] = str(plugins)
    done = subprocess.run(
        [
            "ruby",
            str(HERE / "seed.rb"),
            issuer,
            str(count),
            str(keyfile),
            "private" if private_client_key else "public",
        ],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding Omejdn failed:\n{done.stdout}\n{done.stderr}")
    return [line for line in done.stdout.splitlines() if line.count(".") == 2]
