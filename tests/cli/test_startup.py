"""``omejdn-pg --help`` is quick because nothing heavy is imported for it.

A deterministic check, not a timing: a fresh interpreter imports the CLI (and
renders help, and lists every command) and reports which of the heavy
libraries ended up in ``sys.modules``. The CLI modules' own imports are
checked with the package's ``__init__`` bypassed (a stand-in package object),
so a heavy import in ``omejdn_pg/__init__.py`` — the public surface, outside
the CLI — is told apart from one in the CLI. These need no database.

Likewise ``users list`` and ``clients list``, whose first line an operator
waits for: they need the driver and SQLAlchemy, but not Alembic, the key or
password libraries, nor the facade — checked on a real database, from what is
in ``sys.modules`` when the command's process exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import CLEAN_ENV, REPO
from tests.kits.witness import PlainSQL

HEAVY = ("sqlalchemy", "alembic", "cryptography", "rich", "psycopg", "yaml", "passlib")
"""What a command pays for only when it touches data (yaml: when it reads or prints YAML)."""

BYPASS_INIT = f"""
import sys, types
package = types.ModuleType("omejdn_pg")
package.__path__ = [{str(REPO / "omejdn_pg")!r}]
sys.modules["omejdn_pg"] = package
"""


def imported_after(code: str, *, bypass_init: bool) -> dict[str, list[str]]:
    """Which heavy libraries and which CLI modules are loaded after ``code`` runs."""
    script = (BYPASS_INIT if bypass_init else "") + textwrap.dedent(code)
    script += textwrap.dedent(
        f"""
        import json, sys
        loaded = sorted(sys.modules)
        heavy = sorted({{m.split(".")[0] for m in loaded}} & set({HEAVY!r}))
        cli = [m for m in loaded if m.startswith("omejdn_pg.cli.")]
        print(json.dumps({{"heavy": heavy, "cli": cli}}), file=sys.__stderr__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, list[str]] = json.loads(result.stderr.strip().splitlines()[-1])
    return found


def test_importing_the_cli_loads_no_command_module_and_nothing_heavy() -> None:
    found = imported_after("import omejdn_pg.cli.app", bypass_init=True)
    assert found["heavy"] == []
    assert found["cli"] == ["omejdn_pg.cli.app", "omejdn_pg.cli.context", "omejdn_pg.cli.output"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        [],
        ["users", "--help"],
        ["users", "list", "--help"],
        ["clients", "update", "--help"],
        ["import", "--help"],
        ["completion", "bash"],
    ],
    ids=lambda argv: " ".join(argv) or "bare",
)
def test_help_and_completion_load_nothing_heavy(argv: list[str]) -> None:
    code = f"""
        from omejdn_pg.cli.app import run
        assert run({argv!r}) == 0
    """
    found = imported_after(code, bypass_init=True)
    assert found["heavy"] == []


def test_completion_of_a_command_loads_nothing_heavy() -> None:
    code = """
        import os
        os.environ.update(
            _OMEJDN_PG_COMPLETE="bash_complete", COMP_WORDS="omejdn-pg us", COMP_CWORD="1"
        )
        from omejdn_pg.cli.app import run
        try:
            run([])
        except SystemExit as done:
            assert done.code == 0, done.code
    """
    found = imported_after(code, bypass_init=True)
    assert found["heavy"] == []


def test_importing_the_console_script_loads_nothing_heavy() -> None:
    """The whole path of ``omejdn-pg --help``: the package's ``__init__`` included."""
    surface = imported_after("import omejdn_pg", bypass_init=False)
    assert surface["heavy"] == []
    found = imported_after("from omejdn_pg.cli.app import run; run(['--help'])", bypass_init=False)
    assert found["heavy"] == []


def test_users_and_clients_load_no_key_or_password_library() -> None:
    """The domain objects a listing carries; the key names entities re-exports still resolve."""
    found = imported_after(
        """
        from omejdn_pg.entities import Client, User
        User("ann", attributes={"email": "a@x"}), Client({"client_id": "web"})
        """,
        bypass_init=False,
    )
    assert found["heavy"] == []
    found = imported_after("import omejdn_pg.keys", bypass_init=False)
    assert found["heavy"] == []
    code = """
        import omejdn_pg, omejdn_pg.entities as entities, omejdn_pg.keys as keys
        from omejdn_pg.entities import User
        from omejdn_pg.entities import CHAIN_SEPARATOR, Key, KeyMaterial, KeySet, PrivateKey
        from omejdn_pg.entities import PublicKey, jwk_thumbprint, load_certificate_chain
        from omejdn_pg.entities import load_key_pem
        names = ["CHAIN_SEPARATOR", "Key", "KeyMaterial", "KeySet", "PrivateKey", "PublicKey",
                 "jwk_thumbprint", "load_certificate_chain", "load_key_pem"]
        assert all(getattr(entities, name) is getattr(keys, name) for name in names)
        assert set(names) <= set(dir(entities))
        assert omejdn_pg.KeyMaterial is keys.KeyMaterial
        from omejdn_pg.keys.material import KeyMaterial
        assert keys.KeyMaterial is KeyMaterial and "KeyMaterial" in dir(keys)
        assert User.from_dict({"username": "a", "password": "pw"}).password.startswith("$2")
        try:
            entities.NoSuchName
        except AttributeError as error:
            assert "NoSuchName" in str(error)
        else:
            raise AssertionError("entities.NoSuchName resolved")
    """
    imported_after(code, bypass_init=False)


NOT_FOR_A_LISTING = ("alembic", "mako", "cryptography", "passlib", "bcrypt", "argon2")
"""What a listing never uses: migrations, keys, password hashing."""
NOR_OF_THE_PACKAGE = (
    "omejdn_pg.keys.model",
    "omejdn_pg.passwords",
    "omejdn_pg.sealing",
    "omejdn_pg.service.host",
    "omejdn_pg.bootstrap",
    "omejdn_pg.host.loader",
    "omejdn_pg.postgres.plugin",
    "omejdn_pg.postgres.plugin_core",
    "omejdn_pg.postgres.handlers",
)
"""The facade and the plugin: the CLI's own host has PostgreSQL alone, a listing reads it."""


def listed_and_loaded(*args: str) -> tuple[Any, set[str]]:
    """``omejdn-pg ARGS`` run as ``python -m omejdn_pg`` runs it: its JSON output, and
    every module in ``sys.modules`` when the process exits."""
    script = textwrap.dedent(
        f"""
        import atexit, json, runpy, sys
        atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.__stderr__))
        sys.argv = ["omejdn-pg", *{list(args)!r}]
        runpy.run_module("omejdn_pg", run_name="__main__", alter_sys=True)
        """
    )
    environment = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stderr.strip().splitlines()[-1]))
    assert "sqlalchemy" in modules  # the report is there at all
    return json.loads(result.stdout), modules


@pytest.mark.parametrize("noun", ["users", "clients"])
def test_a_listing_loads_neither_migrations_nor_keys_nor_password_hashing(
    noun: str, database: ConnectionSettings
) -> None:
    sql = PlainSQL(database)
    sql.execute(
        "INSERT INTO users (username, password) VALUES ('ann', '$2b$04$' || repeat('a', 53))"
    )
    sql.execute(
        "INSERT INTO clients (client_id, key, value) VALUES ('web', 'client_id', '\"web\"')"
    )
    rows, modules = listed_and_loaded("--url", database.conninfo(), noun, "list", "--json")
    key = "username" if noun == "users" else "client_id"
    assert [row[key] for row in rows] == ["ann" if noun == "users" else "web"]
    assert sorted({m.split(".")[0] for m in modules} & set(NOT_FOR_A_LISTING)) == []
    assert sorted(modules & set(NOR_OF_THE_PACKAGE)) == []
