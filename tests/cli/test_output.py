"""How ``omejdn-pg`` talks: global options anywhere, ``-o``, help, prompts, Ctrl-C, dry runs.

Subprocesses against a real PostgreSQL; the prompts run on a pseudo-terminal,
since a confirmation needs one (without it the command refuses, see
test_cli). stdout carries data only; notes, counts and prompts go to stderr.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import CLEAN_ENV, ok, omejdn_pg, one_error_line
from tests.kits.witness import PlainSQL


@pytest.fixture
def url(database: ConnectionSettings) -> str:
    return database.conninfo()


# --- help and global options --------------------------------------------------------------


def test_bare_command_prints_help_and_exits_0() -> None:
    bare = ok(omejdn_pg())
    assert bare.stdout == ok(omejdn_pg("--help")).stdout
    assert bare.stdout.startswith("Usage: omejdn-pg")
    assert "Commands:" in bare.stdout
    assert bare.stderr == ""
    group = ok(omejdn_pg("users"))
    assert group.stdout == ok(omejdn_pg("users", "--help")).stdout
    assert "global options" in group.stdout


def test_global_options_before_and_after_the_subcommand(url: str, tmp_path: Path) -> None:
    ok(omejdn_pg("users", "add", "ann", "--extern", "ldap", "--url", url))
    before = ok(omejdn_pg("--url", url, "-o", "json", "users", "list"))
    after = ok(omejdn_pg("users", "list", "--url", url, "-o", "json"))
    middle = ok(omejdn_pg("users", "--url", url, "list", "--json"))
    assert json.loads(before.stdout) == json.loads(after.stdout) == json.loads(middle.stdout)
    assert [u["username"] for u in json.loads(after.stdout)] == ["ann"]
    quiet = ok(omejdn_pg("users", "list", "--url", url, "-q"))
    assert quiet.stderr == ""
    assert "1 of 1 users" in ok(omejdn_pg("users", "list", "--url", url)).stderr
    # The later one wins: a bad --url before, a good one after.
    ok(omejdn_pg("--url", "postgresql://nowhere.invalid/x", "users", "list", "--url", url))
    plugin = tmp_path / "plugins.yml"
    connection = dict(ConnectionSettings.from_url(url).params)
    plugin.write_text(yaml.safe_dump({"plugins": {"postgres_backend": {"connection": connection}}}))
    ok(omejdn_pg("users", "show", "ann", "--config", str(plugin)))
    assert one_error_line(omejdn_pg("users", "list", "-o", "xml", "--url", url), code=2)


def steady(output: Any) -> Any:
    """``output`` without the WAL positions ``check`` reports: any write on the server
    (a checkpoint, another client) moves them between two runs."""
    if isinstance(output, dict) and isinstance(output.get("nodes"), list):
        for node in output["nodes"]:
            node.pop("wal_lsn", None)
    return output


def test_every_data_command_takes_o(url: str) -> None:
    ok(omejdn_pg("--url", url, "config", "set", "omejdn", input="issuer: https://a.example\n"))
    ok(omejdn_pg("--url", url, "users", "add", "ann", "--extern", "ldap"))
    ok(omejdn_pg("--url", url, "clients", "add", "app"))
    for command in (
        ["users", "list"],
        ["users", "show", "ann"],
        ["users", "consent", "list", "ann"],
        ["clients", "list"],
        ["clients", "show", "app"],
        ["config", "list"],
        ["config", "get", "omejdn"],
        ["keys", "jwks"],
        ["migrate", "history"],
        ["check"],
    ):
        as_json = steady(json.loads(ok(omejdn_pg("--url", url, *command, "-o", "json")).stdout))
        as_yaml = steady(yaml.safe_load(ok(omejdn_pg("--url", url, *command, "-o", "yaml")).stdout))
        assert as_json == as_yaml, command
        shorthand = steady(json.loads(ok(omejdn_pg("--url", url, *command, "--json")).stdout))
        assert shorthand == as_json
    got = ok(omejdn_pg("--url", url, "config", "get", "omejdn", "--format", "json"))  # old name
    assert json.loads(got.stdout) == {"issuer": "https://a.example"}
    assert yaml.safe_load(ok(omejdn_pg("--url", url, "config", "get", "omejdn")).stdout) == {
        "issuer": "https://a.example"
    }


def test_completion_scripts() -> None:
    bash = ok(omejdn_pg("completion", "bash")).stdout
    assert "_OMEJDN_PG_COMPLETE=bash_complete" in bash
    assert "complete -o nosort -F _omejdn_pg_completion omejdn-pg" in bash
    assert "_OMEJDN_PG_COMPLETE=zsh_complete" in ok(omejdn_pg("completion", "zsh")).stdout
    assert "_OMEJDN_PG_COMPLETE=fish_complete" in ok(omejdn_pg("completion", "fish")).stdout
    assert one_error_line(omejdn_pg("completion", "tcsh"), code=2)
    completed = omejdn_pg(
        env={
            "_OMEJDN_PG_COMPLETE": "bash_complete",
            "COMP_WORDS": "omejdn-pg cl",
            "COMP_CWORD": "1",
        }
    )
    assert completed.returncode == 0, completed.stderr
    assert "plain,clients" in completed.stdout.splitlines()
    options = omejdn_pg(
        env={
            "_OMEJDN_PG_COMPLETE": "bash_complete",
            "COMP_WORDS": "omejdn-pg users list --fi",
            "COMP_CWORD": "3",
        }
    )
    assert "plain,--filter" in options.stdout.splitlines()


# --- prompts and Ctrl-C on a terminal ------------------------------------------------------


def in_terminal(*args: str, reply: bytes | None) -> tuple[int, str, str]:
    """Run the CLI with stdin and stderr on a pseudo-terminal; answer its prompt with
    ``reply``, or press Ctrl-C (SIGINT) at it if ``reply`` is None."""
    environment = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "omejdn_pg", *args],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=environment,
        text=True,
        # A background job (CI, an agent's shell) starts with SIGINT ignored, and Python
        # then installs no handler: give the CLI the disposition an operator's shell gives.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while b"[y/N]" not in seen:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                seen += os.read(controller, 1024)
        if reply is None:
            process.send_signal(signal.SIGINT)
        else:
            os.write(controller, reply)
        stdout, _ = process.communicate(timeout=120)
        while True:
            ready, _, _ = select.select([controller], [], [], 1)
            if not ready:
                break
            try:
                chunk = os.read(controller, 1024)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return process.returncode, stdout, seen.decode(errors="replace")


def test_declining_deletes_nothing_and_exits_0(url: str, plain_sql: PlainSQL) -> None:
    ok(omejdn_pg("--url", url, "users", "add", "ann", "--extern", "ldap"))
    ok(omejdn_pg("--url", url, "users", "add", "bob", "--extern", "ldap"))
    status, stdout, terminal = in_terminal(
        "--url", url, "users", "delete", "ann", "bob", reply=b"n\n"
    )
    assert status == 0, terminal
    assert "Delete 2 users (ann, bob)? [y/N]" in terminal
    assert "nothing deleted" in terminal
    assert stdout == ""
    assert plain_sql.value("SELECT count(*) FROM users") == 2

    status, stdout, terminal = in_terminal("--url", url, "users", "delete", "ann", reply=b"y\n")
    assert status == 0, terminal
    assert stdout == "deleted user ann\n"
    assert plain_sql.rows("SELECT username FROM users") == [("bob",)]


def test_ctrl_c_exits_130_without_a_traceback(url: str, plain_sql: PlainSQL) -> None:
    ok(omejdn_pg("--url", url, "clients", "add", "app"))
    status, stdout, terminal = in_terminal("--url", url, "clients", "delete", "app", reply=None)
    assert status == 130, terminal
    assert "Traceback" not in terminal
    assert "error: interrupted" in terminal
    assert stdout == ""
    assert plain_sql.value("SELECT count(DISTINCT client_id) FROM clients") == 1


# --- dry runs --------------------------------------------------------------------------------


def test_config_set_unchanged_dry_run_and_replace(url: str, plain_sql: PlainSQL) -> None:
    def config_set(*args: str, input: str) -> subprocess.CompletedProcess[str]:
        return omejdn_pg("--url", url, "config", "set", *args, input=input)

    ok(config_set("scopes", input="openid: Sign in\nprofile: Your profile\n"))
    same = ok(config_set("scopes", input='{"profile": "Your profile", "openid": "Sign in"}'))
    assert same.stdout == "configuration section scopes unchanged\n"
    dry = ok(config_set("scopes", "--dry-run", input="openid: Log in\nemail: Your email\n"))
    assert dry.stdout == (
        "would write configuration section scopes: adds email; changes openid; removes profile\n"
    )
    assert plain_sql.rows("SELECT key, value FROM configuration_scopes ORDER BY key") == [
        ("openid", "Sign in"),
        ("profile", "Your profile"),
    ]
    refused = one_error_line(config_set("scopes", input="- openid\n- profile\n"))
    assert "is a mapping and <stdin> holds a list" in refused
    assert "--replace" in refused
    assert plain_sql.value("SELECT count(*) FROM configuration_scopes") == 2
    ok(config_set("scopes", "--replace", input="- openid\n- profile\n"))
    assert plain_sql.rows("SELECT item FROM configuration_scopes ORDER BY position") == [
        ("openid",),
        ("profile",),
    ]
    assert "is a list and <stdin> holds a mapping" in one_error_line(
        config_set("scopes", "--dry-run", input="a: 1\n")
    )


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    config = tmp_path / "deployment" / "config"
    config.mkdir(parents=True)
    (config / "users.yml").write_text(
        yaml.safe_dump(
            [
                {"username": "ann", "password": "ann-plain-pw", "attributes": {"email": "a@x"}},
                {"username": "bob", "extern": "ldap", "attributes": {"tier": 1}},
            ]
        )
    )
    (config / "clients.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "client_id": "app",
                    "client_name": "App",
                    "token_endpoint_auth_method": "client_secret_basic",
                    "client_secret": "first-client-secret",
                }
            ]
        )
    )
    (config / "omejdn.yml").write_text(yaml.safe_dump({"issuer": "https://a.example"}))
    return tmp_path / "deployment"


def test_import_dry_run_summary_and_field_diff(
    url: str, deployment: Path, plain_sql: PlainSQL
) -> None:
    summary = ok(omejdn_pg("--url", url, "import", "--dry-run", str(deployment)))
    lines = summary.stdout.splitlines()
    assert lines[0] == "dry run, nothing written"
    assert lines[1].split() == ["ADDED", "CHANGED", "UNCHANGED"]
    assert lines[2].split() == ["users", "2", "0", "0"]
    assert lines[3].split() == ["clients", "1", "0", "0"]
    assert "would create" not in summary.stdout  # the list of changes comes with -v
    assert plain_sql.value("SELECT count(*) FROM users") == 0
    ok(omejdn_pg("--url", url, "import", str(deployment)))

    users = yaml.safe_load((deployment / "config" / "users.yml").read_text())
    users[0]["attributes"]["email"] = "ann@new.example"
    users[0]["password"] = "ann-new-plain-pw"
    users[1]["attributes"]["tier"] = 2
    (deployment / "config" / "users.yml").write_text(yaml.safe_dump(users))
    clients = yaml.safe_load((deployment / "config" / "clients.yml").read_text())
    clients[0]["client_secret"] = "second-client-secret"
    clients[0]["client_name"] = "App 2"
    (deployment / "config" / "clients.yml").write_text(yaml.safe_dump(clients))
    (deployment / "config" / "omejdn.yml").write_text("issuer: https://b.example\n")

    detailed = ok(omejdn_pg("--url", url, "import", "--dry-run", "-v", str(deployment)))
    out = detailed.stdout
    assert "would update users ann\n" in out
    assert '    attributes.email: "a@x" -> "ann@new.example"\n' in out
    assert "    password: <changed>\n" in out
    assert "would update users bob\n    attributes.tier: 1 -> 2\n" in out
    assert "would update clients app\n" in out
    assert '    client_name: "App" -> "App 2"\n' in out
    assert "    client_secret: <changed>\n" in out
    assert (
        'would update config omejdn\n    issuer: "https://a.example" -> "https://b.example"' in out
    )
    for secret in ("ann-new-plain-pw", "ann-plain-pw", "first-client-secret", "second-"):
        assert secret not in out + detailed.stderr
    assert "$2" not in out
    assert "4 change(s) would be written" in out

    data = json.loads(
        ok(
            omejdn_pg("--url", url, "import", "--dry-run", "-v", "-o", "json", str(deployment))
        ).stdout
    )
    ann = next(c for c in data["changes"] if c["name"] == "ann")
    assert ann["fields"] == [
        {"field": "attributes.email", "old": "a@x", "new": "ann@new.example"},
        {"field": "password", "old": "<changed>", "new": "<changed>"},
    ]
    assert "second-client-secret" not in json.dumps(data)
    assert plain_sql.value("SELECT value FROM clients WHERE key = 'client_name'") == "App"


# --- control characters from the data never reach the terminal raw --------------------------

SPOOF = "mallory\x1b]0;owned\x07\x1b[2K\radmin\u202e"
"""ESC/OSC retitles the terminal, CSI erases the line, CR starts it over as "admin",
U+202E reverses what follows."""


def test_users_list_escapes_control_characters_in_human_output(
    url: str, plain_sql: PlainSQL
) -> None:
    plain_sql.execute(
        "INSERT INTO users (username, password, extern, consent) VALUES (%s, NULL, NULL, '{}')",
        (SPOOF,),
    )
    plain_sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) VALUES ('user', %s, 'note', %s)",
        (SPOOF, json.dumps("line\r\x1b[31mred\x9b")),
    )

    for args in (("users", "list"), ("users", "list", "-v")):
        human = ok(omejdn_pg("--url", url, *args)).stdout
        for raw in ("\x1b", "\x07", "\r", "\u202e", "\x9b"):
            assert raw not in human, (args, raw)
        assert "mallory\\x1b]0;owned\\x07\\x1b[2K\\x0dadmin\\u202e" in human

    verbose = ok(omejdn_pg("--url", url, "users", "list", "-v")).stdout
    assert "note=line\\x0d\\x1b[31mred\\x9b" in verbose

    exact = json.loads(ok(omejdn_pg("--url", url, "users", "list", "-o", "json")).stdout)
    assert exact[0]["username"] == SPOOF
    as_yaml = yaml.safe_load(ok(omejdn_pg("--url", url, "users", "list", "-o", "yaml")).stdout)
    assert as_yaml[0]["username"] == SPOOF


def test_a_streamed_yaml_listing_is_the_text_safe_dump_writes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Batched, a listing reads back as the same list and is the very text of one
    ``yaml.safe_dump`` per record; a value shared between records is written out in
    each, never as an anchor. A multi-line string is double-quoted on one line where
    PyYAML folds it into single quotes: another text, the same value."""
    from omejdn_pg.cli.output import YAML_BATCH, _stream_yaml

    shared = {"role": "staff"}
    records = [
        {"username": f"u{i}", "attributes": shared, "note": "é zwei", "password": None}
        for i in range(2 * YAML_BATCH + 3)
    ]
    assert _stream_yaml(records) == len(records)
    text = capsys.readouterr().out
    expected = "".join(
        yaml.safe_dump([dict(r)], sort_keys=False, allow_unicode=True, default_flow_style=False)
        for r in records
    )
    assert text == expected
    assert "&id" not in text
    assert yaml.safe_load(text) == records
    assert _stream_yaml([]) == 0
    assert capsys.readouterr().out == "[]\n"

    lines = [{"username": "u", "note": "é\nzwei"}]
    assert _stream_yaml(lines) == 1
    text = capsys.readouterr().out
    assert text == '- username: u\n  note: "é\\nzwei"\n'
    assert yaml.safe_load(text) == lines


class _Terminal(io.StringIO):
    """stdout whose reader sees only what was flushed."""

    shown = ""

    def flush(self) -> None:
        self.shown = self.getvalue()


@pytest.mark.parametrize("fmt", ["table", "json", "yaml"])
def test_a_listing_shows_its_first_rows_before_its_last_record_is_read(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every format streams: the first rows reach the reader while the records are still
    being read (a table after its first WIDTH_SAMPLE rows, which set its widths)."""
    from omejdn_pg.cli.output import WIDTH_SAMPLE, YAML_BATCH, Column, stream

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    total = max(WIDTH_SAMPLE, YAML_BATCH) + 10
    shown_before_last: list[str] = []

    def records() -> Iterator[dict[str, Any]]:
        for index in range(total):
            if index == total - 1:
                shown_before_last.append(terminal.shown)
            yield {"username": f"user{index:04d}", "consent": {}}

    columns = [Column("username", lambda record: record["username"])]
    assert stream(fmt, records(), columns) == total
    assert "user0000" in shown_before_last[0]
    assert f"user{total - 1:04d}" not in shown_before_last[0]
    assert f"user{total - 1:04d}" in terminal.shown
