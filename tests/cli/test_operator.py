"""The command line as a new operator meets it: secrets kept off it, and the small surprises.

Secrets on the command line are visible to every user of the machine in
``ps``: a client secret is read from stdin instead, and a password inside
``--url`` draws a warning. The rest are the things an operator coming from
other tools trips over: a readiness probe that said "ready" on an unmigrated
database, ``| head`` ending in a failure, ``-q`` still printing summaries,
``users show`` missing fields ``users list`` has, an empty input reported as
``NoneType``, staging folders left behind by a killed export, and Ctrl-C in an
import not saying what happened to the data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import yaml

from omejdn_pg.postgres import migrate
from omejdn_pg.settings.connection import ConnectionSettings
from tests import secrets
from tests.kits.commands import CLEAN_ENV, ok, omejdn_pg, one_error_line
from tests.kits.witness import PlainSQL

# --- secrets off the command line --------------------------------------------------------


def test_a_client_secret_comes_from_stdin(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    url = database.conninfo()
    ok(omejdn_pg("--url", url, "clients", "add", "portal", "--auth-method", "client_secret_basic"))
    updated = ok(
        omejdn_pg(
            "--url", url, "clients", "update", "portal", "--secret-stdin", input="n3w-secret\n"
        )
    )
    assert "warning" not in updated.stderr
    stored = plain_sql.value(
        "SELECT value #>> '{}' FROM clients WHERE client_id = 'portal' AND key = 'client_secret'"
    )
    assert stored == "n3w-secret"
    # On the command line it still works, with a warning saying why not to.
    argued = ok(
        omejdn_pg("--url", url, "clients", "update", "portal", "--set", "client_secret=x-y-z")
    )
    assert "--secret-stdin" in argued.stderr
    assert "ps" in argued.stderr
    help_text = ok(omejdn_pg("clients", "update", "--help")).stdout
    assert "--secret-stdin" in help_text


def test_a_password_in_url_draws_a_warning_and_help_says_where_instead(
    password_server: ConnectionSettings,
) -> None:
    with_password = password_server.conninfo()
    warned = ok(omejdn_pg("--url", with_password, "migrate", "current"))
    assert "warning: the password in --url is visible" in warned.stderr
    assert "PGPASSWORD" in warned.stderr
    without = password_server.with_params(password="").params
    quiet = ok(
        omejdn_pg(
            "--url",
            ConnectionSettings({k: v for k, v in without.items() if k != "password"}).conninfo(),
            "migrate",
            "current",
            env={"PGPASSWORD": password_server.params["password"]},
        )
    )
    assert "warning" not in quiet.stderr
    # From $OMEJDN_PG_URL it is not on the command line: no warning.
    from_env = ok(omejdn_pg("migrate", "current", env={"OMEJDN_PG_URL": with_password}))
    assert "warning" not in from_env.stderr
    help_text = ok(omejdn_pg("--help")).stdout
    assert "PGPASSWORD" in help_text
    assert "~/.pgpass" in help_text


# --- check --ready, db status ----------------------------------------------------------


def test_ready_requires_the_schema_at_head(
    empty_database: ConnectionSettings, database: ConnectionSettings
) -> None:
    unmigrated = omejdn_pg("--url", empty_database.conninfo(), "check", "--ready")
    line = one_error_line(unmigrated)
    assert "not ready" in line
    assert "no omejdn_pg schema" in line
    assert f"{migrate.head()} is needed" in line
    ok(omejdn_pg("--url", empty_database.conninfo(), "check", "--ready", "--any-schema"))
    assert "ready" in ok(omejdn_pg("--url", database.conninfo(), "check", "--ready")).stdout


# --- pipes, -q, show ---------------------------------------------------------------------


def test_a_reader_that_stops_early_is_no_failure(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    plain_sql.execute(
        "INSERT INTO users (username, password) "
        "SELECT 'user' || n, NULL FROM generate_series(1, 20000) AS n"
    )
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    command = (
        f"{sys.executable} -m omejdn_pg --url '{database.conninfo()}' users list | head -2; "
        'echo "status=${PIPESTATUS[0]}" >&2'
    )
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    secrets.said(result.stdout + result.stderr)
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr.strip().splitlines() == ["status=0"], result.stderr


def test_quiet_quiets_the_summaries_of_import_export_and_migrate(
    database: ConnectionSettings, examples: Path, tmp_path: Path
) -> None:
    url = database.conninfo()
    for name, command in (
        ("migrate", ["migrate", "upgrade"]),
        ("import", ["import", str(examples)]),
        ("export", ["export", str(tmp_path / "quiet")]),
    ):
        quiet = ok(omejdn_pg("-q", "--url", url, *command))
        assert quiet.stdout == "", (name, quiet.stdout)
        assert quiet.stderr == "", (name, quiet.stderr)
    # Without -q each has its summary (the control), and data asked for prints with -q.
    assert ok(omejdn_pg("--url", url, "migrate", "upgrade")).stdout
    assert ok(omejdn_pg("--url", url, "import", str(examples))).stdout
    assert ok(omejdn_pg("--url", url, "export", str(tmp_path / "loud"))).stdout
    asked = ok(omejdn_pg("-q", "--url", url, "import", str(examples), "-o", "json"))
    assert "changes" in json.loads(asked.stdout)


def test_users_show_has_the_fields_of_users_list(database: ConnectionSettings) -> None:
    url = database.conninfo()
    ok(omejdn_pg("--url", url, "users", "add", "ann", "--extern", "ldap"))
    ok(omejdn_pg("--url", url, "users", "add", "bob", "--password-stdin", input="mypassword\n"))
    listed = {
        u["username"]: u
        for u in json.loads(ok(omejdn_pg("--url", url, "users", "list", "-o", "json")).stdout)
    }
    for name in ("ann", "bob"):
        shown = json.loads(ok(omejdn_pg("--url", url, "users", "show", name, "-o", "json")).stdout)
        for field in ("backend", "extern", "has_password"):
            assert field in shown, (name, field)
            assert shown[field] == listed[name][field], (name, field)
    assert listed["ann"]["extern"] == "ldap"


def test_config_set_from_empty_input_says_so(database: ConnectionSettings, tmp_path: Path) -> None:
    url = database.conninfo()
    line = one_error_line(omejdn_pg("--url", url, "config", "set", "s", input=""))
    assert "the input is empty" in line
    assert "NoneType" not in line
    comments = tmp_path / "s.yml"
    comments.write_text("# nothing yet\n")
    assert "the input is empty" in one_error_line(
        omejdn_pg("--url", url, "config", "set", "s", str(comments))
    )


# --- export staging, Ctrl-C in import -------------------------------------------------------


def test_export_clears_staging_folders_of_a_killed_export(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    url = database.conninfo()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.export-{dead.pid}-x1y2z3"
    (stale / "config").mkdir(parents=True)
    (stale / "config" / "users.yml").write_text("[]\n")
    running = tmp_path / f".out.export-{os.getpid()}-a1b2c3"
    running.mkdir()
    ok(omejdn_pg("--url", url, "export", str(tmp_path / "out")))
    assert not stale.exists()
    assert running.exists()  # its process is alive: maybe an export in progress
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    assert leftovers == [running.name]


def test_ctrl_c_during_import_says_nothing_was_written(
    database: ConnectionSettings, examples: Path, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    plugins = tmp_path / "plugins.yml"
    plugins.write_text(
        yaml.safe_dump(
            {
                "plugins": {
                    "postgres_backend": {"connection": dict(database.params), "lock_timeout": "60s"}
                }
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    holder = psycopg.connect(database.conninfo())
    try:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        process = subprocess.Popen(
            [sys.executable, "-m", "omejdn_pg", "--config", str(plugins), "import", str(examples)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            # As from a terminal: a shell that starts a job in the background has
            # it ignore SIGINT, the child would inherit that, and Python then installs no
            # KeyboardInterrupt handler.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while not plain_sql.value(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the import never waited for the lock"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        holder.close()
    secrets.said(stdout + stderr)
    assert process.returncode == 130, stderr
    assert (
        stderr.strip() == "error: interrupted: nothing was written (the import is one transaction)"
    )
    for table in ("users", "clients", "keys"):
        assert plain_sql.value(f"SELECT count(*) FROM {table}") == 0, table
