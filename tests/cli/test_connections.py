"""An operator's connection mistakes: each one loud, bounded in time, and without the secret.

A plugin file whose ``postgres_backend`` section names no database, a server
that accepts the TCP connection and never answers (here a socket that listens
and nothing more), a wrong password against the suite's scram-checking
server: each is tried through the command line, as the operator meets it,
and through the plugin, as the Omejdn service meets it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from omejdn_pg import PluginLoader
from omejdn_pg.errors import ConfigurationError, StorageUnavailable
from omejdn_pg.settings.connection import ConnectionSettings
from tests import secrets
from tests.kits.commands import CLEAN_ENV, ok, omejdn_pg, one_error_line, python_m

DEFAULT_CONNECT_TIMEOUT = 10
"""Seconds, as the README documents (``omejdn_pg.settings.connection.DEFAULT_CONNECT_TIMEOUT``)."""
LIBPQ_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGSERVICE", "PGUSER")


def plugin_file(tmp_path: Path, section: dict[str, object], name: str = "plugins") -> Path:
    path = tmp_path / f"{name}.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "plugins": {"postgres_backend": section},
                "deactivate_defaults": ["config", "keys", "client", "user"],
            }
        )
    )
    return path


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI with none of the PG* variables of this process, only ``env``'s."""
    environment = {k: v for k, v in os.environ.items() if k not in (*CLEAN_ENV, *LIBPQ_ENV)}
    result = python_m("omejdn_pg", *args, env={**environment, **env})
    secrets.said(result.stdout + result.stderr)
    return result


# --- a plugin section without 'connection' -------------------------------------------


def test_a_section_without_connection_is_an_error_naming_the_file(tmp_path: Path) -> None:
    """It connected to libpq's defaults (another database on the machine) and advised
    `migrate` there."""
    path = plugin_file(tmp_path, {"passwords": {"bcrypt_rounds": 4}})
    result = cli("--config", str(path), "users", "list", env={})
    line = one_error_line(result)
    assert str(path) in line
    assert "has no 'connection'" in line
    assert "migrate" not in line
    saved = {name: os.environ.pop(name, None) for name in LIBPQ_ENV}
    try:
        with pytest.raises(ConfigurationError, match="has no 'connection'") as caught:
            PluginLoader.from_files([path], base_dir=tmp_path)
        assert str(path) in str(caught.value)
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def test_a_pg_variable_or_an_empty_connection_chooses_on_purpose(
    tmp_path: Path, database: ConnectionSettings
) -> None:
    params = database.params
    chosen = {
        "PGHOST": params["host"],
        "PGPORT": params.get("port", "5432"),
        "PGDATABASE": params["dbname"],
        "PGUSER": params.get("user", ""),
    }
    path = plugin_file(tmp_path, {"passwords": {"bcrypt_rounds": 4}})
    ok(cli("--config", str(path), "users", "add", "ann", "--extern", "ldap", env=chosen))
    on_purpose = plugin_file(tmp_path, {"connection": {}}, "on-purpose")
    listed = ok(cli("--config", str(on_purpose), "users", "list", "-o", "json", env=chosen))
    assert '"ann"' in listed.stdout
    # PGUSER alone chooses no server: it says who logs in to whatever the defaults reach.
    user_only = {"PGUSER": params.get("user", "")}
    line = one_error_line(cli("--config", str(path), "users", "list", env=user_only))
    assert "has no 'connection'" in line


# --- a server that accepts and never answers -------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake and then nothing ever answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def timed(command: list[str], env: dict[str, str], limit: float) -> tuple[float, str]:
    """Run ``command``; (seconds taken, stderr). Killed at ``limit`` (and then failed)."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still waiting after {limit:g} s: {command[3:]}")
    secrets.said(result.stderr)
    assert result.returncode == 1, result.stderr
    return time.monotonic() - started, result.stderr


def clean_env() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    environment.pop("PGCONNECT_TIMEOUT", None)
    return environment


def test_every_command_gives_up_on_a_silent_server(silent_server: int) -> None:
    url = f"postgresql://omejdn@127.0.0.1:{silent_server}/omejdn"
    limit = DEFAULT_CONNECT_TIMEOUT * 3
    cli = [sys.executable, "-m", "omejdn_pg", "--url", url, "users", "list"]
    default, stderr = timed(cli, clean_env(), limit)
    assert DEFAULT_CONNECT_TIMEOUT - 1 <= default < limit, default
    assert "timeout expired" in stderr
    # Overridable: in the URL, or libpq's own variable. Compared with the default
    # run rather than a fixed figure: the interpreter's start varies with the load.
    shorter, _ = timed([*cli[:4], f"{url}?connect_timeout=2", *cli[5:]], clean_env(), limit)
    assert shorter < default - 5, (shorter, default)
    shorter, _ = timed(cli, {**clean_env(), "PGCONNECT_TIMEOUT": "2"}, limit)
    assert shorter < default - 5, (shorter, default)


def test_the_service_gives_up_on_a_silent_server(silent_server: int, tmp_path: Path) -> None:
    path = plugin_file(
        tmp_path, {"connection": {"host": "127.0.0.1", "port": silent_server, "dbname": "omejdn"}}
    )
    # In a child process: before the bound existed, this waited for ever.
    script = (
        "import sys\n"
        "from omejdn_pg import PluginLoader\n"
        "from omejdn_pg.errors import StorageUnavailable\n"
        "try:\n"
        f"    PluginLoader.from_files([{str(path)!r}])\n"
        "except StorageUnavailable as error:\n"
        "    sys.exit(str(error))\n"
    )
    limit = DEFAULT_CONNECT_TIMEOUT * 3
    seconds, stderr = timed([sys.executable, "-c", script], clean_env(), limit)
    assert DEFAULT_CONNECT_TIMEOUT - 1 <= seconds < limit, seconds
    assert "timeout expired" in stderr


# --- a wrong password ---------------------------------------------------------------------


def test_a_wrong_password_says_authentication_failed_and_what_to_check(
    password_server: ConnectionSettings, tmp_path: Path
) -> None:
    secret = "Wr0ng-Password"
    user = password_server.params["user"]
    url = password_server.with_params(password=secret).conninfo()
    for command in (["users", "list"], ["check"], ["migrate", "current"]):
        result = omejdn_pg("--url", url, *command)
        line = one_error_line(result)
        assert f'authentication failed for user "{user}"' in line, line
        assert "unavailable" not in line
        assert "PGPASSWORD" in line
        assert "pg_hba.conf" in line
        assert secret not in result.stdout + result.stderr
    path = plugin_file(tmp_path, {"connection": {**password_server.params, "password": secret}})
    with pytest.raises(StorageUnavailable) as caught:
        PluginLoader.from_files([path], base_dir=tmp_path)
    assert f'authentication failed for user "{user}"' in str(caught.value)
    assert "unavailable" not in str(caught.value)
