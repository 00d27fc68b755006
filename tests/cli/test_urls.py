"""Connection URLs as users write them: every accepted form, and what a malformed one says.

``--url``, ``$OMEJDN_PG_URL`` and ``alembic -x url=`` all go through
``ConnectionSettings.from_url`` (``migrate.connection_settings`` for the
latter two), so the forms are checked there without a database, and each way
in once against the test database with the SQLAlchemy form.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.postgres import migrate
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import REPO, ok, omejdn_pg, one_error_line, python_m

SECRET = "Pw-7#secret"
QUOTED = quote(SECRET, safe="")


EXPECTED = {
    "user": "alice",
    "password": SECRET,
    "host": "db.example",
    "port": "5433",
    "dbname": "omejdn",
}


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://alice:{QUOTED}@db.example:5433/omejdn",
        f"postgres://alice:{QUOTED}@db.example:5433/omejdn",
        f"postgresql+psycopg://alice:{QUOTED}@db.example:5433/omejdn",
        f"postgresql+psycopg2://alice:{QUOTED}@db.example:5433/omejdn",
        f"PostgreSQL+Psycopg://alice:{QUOTED}@db.example:5433/omejdn",
        f"  postgresql://alice:{QUOTED}@db.example:5433/omejdn\n",
        f"host=db.example port=5433 dbname=omejdn user=alice password='{SECRET}'",
        f"user=alice password={SECRET} host=db.example port=5433 dbname=omejdn",
    ],
)
def test_every_form_means_the_same_connection(url: str) -> None:
    assert dict(ConnectionSettings.from_url(url).params) == EXPECTED
    assert dict(migrate.connection_settings(url, environ={}).params) == EXPECTED
    assert dict(migrate.connection_settings(None, {"OMEJDN_PG_URL": url}).params) == EXPECTED


def test_libpq_keywords_and_multi_host_survive() -> None:
    params = ConnectionSettings.from_url(
        "postgresql+psycopg://u@db1:5432,db2:5433/x?target_session_attrs=read-write&sslmode=require"
    ).params
    assert params["host"] == "db1,db2"
    assert params["port"] == "5432,5433"
    assert params["target_session_attrs"] == "read-write"
    assert params["sslmode"] == "require"
    socket = ConnectionSettings.from_url("postgresql:///omejdn?host=/run/postgresql").params
    assert dict(socket) == {"dbname": "omejdn", "host": "/run/postgresql"}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"postgresql://alice:{SECRET}@db:abc/omejdn", "invalid port 'abc'"),
        (f"postgresql://alice:{SECRET}@db:99999/omejdn", "invalid port '99999'"),
        (f"postgresql://alice:{SECRET}@db1:5432,db2:x/omejdn", "invalid port 'x'"),
        (f"host=db port=abc password={SECRET}", "invalid port 'abc'"),
        (f"mysql://alice:{SECRET}@db/omejdn", "unknown scheme 'mysql'"),
        (f"postgresql+asyncpg://alice:{SECRET}@db/omejdn", "unknown driver 'asyncpg'"),
        (f"postgresql://alice:{SECRET}@db/omejdn?sslmode=maybe", "invalid sslmode 'maybe'"),
        (
            f"postgresql://alice:{SECRET}@db/o?connect_timeout=soon",
            "invalid connect_timeout 'soon'",
        ),
        (
            f"postgresql://alice:{SECRET}@db/omejdn?colour=red",
            'invalid URI query parameter: "colour"',
        ),
        (f"host=db colour=red password={SECRET}", 'invalid connection option "colour"'),
        (f"postgresql://alice:{SECRET}@[::1/omejdn", 'matching "]"'),
        ("postgresql://alice:p%zz@db/omejdn", "the user info (before the host) is malformed"),
        ("db.example:5432/omejdn", "missing '=' after 'db.example:5432/omejdn'"),
        (f"host=db password={SECRET} more", "a word without '=' after the password"),
        ("host=db password=two words", "a word without '=' after the password"),
        (f"host=db password='{SECRET}", "unterminated quoted value of 'password'"),
    ],
)
def test_a_malformed_url_says_what_is_wrong_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ConnectionSettings.from_url(url)
    message = str(caught.value)
    assert message.startswith("invalid PostgreSQL connection URL: ")
    assert says in message
    for secret in (SECRET, "p%zz", "words"):
        assert secret not in message


def sqlalchemy_url(settings: ConnectionSettings) -> str:
    """The test database as the ``postgresql+psycopg://`` URL an Alembic user would type."""
    params = dict(settings.params)
    user = quote(params.pop("user", ""), safe="")
    dbname = quote(params.pop("dbname", ""), safe="")
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return f"postgresql+psycopg://{user}@/{dbname}" + (f"?{query}" if query else "")


def test_the_sqlalchemy_form_in_every_way_in(database: ConnectionSettings) -> None:
    url = sqlalchemy_url(database)
    ok(omejdn_pg("--url", url, "users", "add", "ann", "--extern", "ldap"))
    listed = ok(omejdn_pg("users", "list", "-o", "json", env={"OMEJDN_PG_URL": url}))
    assert '"ann"' in listed.stdout
    head = migrate.head()
    alembic = python_m("alembic", "-x", f"url={url}", "current", cwd=REPO)
    assert alembic.returncode == 0, alembic.stderr
    assert head in alembic.stdout


def test_a_malformed_url_on_the_command_line() -> None:
    line = one_error_line(omejdn_pg("--url", f"postgresql://a:{SECRET}@db:abc/x", "users", "list"))
    assert line.startswith("error: --url: invalid PostgreSQL connection URL: invalid port 'abc'")
    assert SECRET not in line
    from_env = omejdn_pg("check", env={"OMEJDN_PG_URL": f"mysql://a:{SECRET}@db/x"})
    line = one_error_line(from_env)
    assert "$OMEJDN_PG_URL: invalid PostgreSQL connection URL: unknown scheme 'mysql'" in line
    assert SECRET not in from_env.stdout + from_env.stderr


@pytest.mark.parametrize(
    "userinfo",
    ["omejdn:Sup3r@Secret2024", "omejdn:p@ss", "omejdn:pa/ss", "om@jdn:Secret2024", "a:s@"],
)
def test_an_unencoded_at_in_the_user_info_is_refused_without_any_of_it(userinfo: str) -> None:
    """libpq splits at the first '@': the rest of the password became the host name and
    was quoted in the error (and sent to DNS). Nothing of the user info may be said."""
    url = f"postgresql://{userinfo}@127.0.0.1/db"
    result = omejdn_pg("--url", url, "users", "list")
    line = one_error_line(result)
    assert "unencoded '@' or '/'" in line
    assert "%40" in line  # the hint: how to write it instead
    parts = [p for p in userinfo.replace("@", ":").replace("/", ":").split(":") if len(p) > 3]
    for part in [*parts, "ss@", "ss/", "127.0.0.1"]:
        assert part not in result.stderr + result.stdout, part
    # The same URL percent-encoded is the connection that was meant.
    user, _, password = userinfo.partition(":")
    encoded = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1/db"
    params = ConnectionSettings.from_url(encoded).params
    assert (params["user"], params["password"], params["host"]) == (user, password, "127.0.0.1")


def test_a_one_letter_password_does_not_garble_the_message() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ConnectionSettings.from_url("postgresql://u:s@db/omejdn?colour=red")
    assert 'invalid URI query parameter: "colour"' in str(caught.value)
