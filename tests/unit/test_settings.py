"""The static plugin configuration: parsing, validation messages, secrets kept out."""

from __future__ import annotations

from pathlib import Path

import pytest

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.settings.backend import HANDLER_GROUPS, PoolSettings
from omejdn_pg.settings.connection import ConnectionSettings
from omejdn_pg.settings.static import StaticConfiguration

SEED = """\
plugins:
   postgres_backend:
      connection:
         host: localhost
         port: 5432
         dbname: omejdn
         user: myuser
         password: mypassword
      handlers: [keys, config, client, user]
deactivate_defaults: [config, keys, client, user]
user_backend_default: postgres
client_backend_default: postgres
"""


def write(tmp_path: Path, text: str, name: str = "plugins.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_documented_example_parses(tmp_path: Path) -> None:
    configuration = StaticConfiguration.from_files([write(tmp_path, SEED)])
    backend = configuration.backend_settings()
    assert dict(backend.connection.params) == {
        "host": "localhost",
        "port": "5432",
        "dbname": "omejdn",
        "user": "myuser",
        "password": "mypassword",
    }
    assert backend.handlers == frozenset(HANDLER_GROUPS)
    assert configuration.deactivate_defaults == frozenset(HANDLER_GROUPS)
    assert configuration.user_backend_default == "postgres"
    assert configuration.client_backend_default == "postgres"
    assert backend.pool == PoolSettings()


def test_the_password_never_shows(tmp_path: Path) -> None:
    configuration = StaticConfiguration.from_files([write(tmp_path, SEED)])
    backend = configuration.backend_settings()
    for shown in (
        repr(configuration),
        repr(backend),
        str(backend),
        repr(backend.connection),
        str(backend.connection),
    ):
        assert "mypassword" not in shown
    assert backend.connection.describe() == "myuser@localhost:5432/omejdn"


def test_files_merge_in_order_later_keys_win(tmp_path: Path) -> None:
    first = write(tmp_path, SEED, "a.yml")
    second = write(
        tmp_path,
        "plugins:\n  postgres_backend:\n    connection:\n      dbname: other\n"
        "    handlers: [config]\n",
        "b.yml",
    )
    backend = StaticConfiguration.from_env(
        {"OMEJDN_PLUGINS": f"{first}:{second}"}
    ).backend_settings()
    assert backend.connection.params["dbname"] == "other"
    assert backend.connection.params["host"] == "localhost"  # deep merge keeps the rest
    assert backend.handlers == frozenset({"config"})


def test_omitted_handlers_mean_all_four(tmp_path: Path) -> None:
    path = write(tmp_path, "plugins:\n  postgres_backend:\n    connection: {dbname: x}\n")
    assert StaticConfiguration.from_files([path]).backend_settings().handlers == frozenset(
        HANDLER_GROUPS
    )


def validate_everything(path: Path) -> None:
    configuration = StaticConfiguration.from_files([path])
    configuration.backend_settings()
    assert configuration.deactivate_defaults is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "plugins:\n  postgres_backend:\n    handlers: [keys, users]\n",
            "plugins.postgres_backend.handlers: unknown handler(s) 'users'; "
            "allowed: keys, config, client, user",
        ),
        (
            "plugins:\n  postgres_backend:\n    handlers: keys\n",
            "plugins.postgres_backend.handlers must be a non-empty list of handler names; "
            "allowed: keys, config, client, user",
        ),
        (
            "plugins:\n  postgres_backend:\n    handlers: []\n",
            "plugins.postgres_backend.handlers must be a non-empty list of handler names",
        ),
        (
            "plugins:\n  postgres_backend:\n    connecton: {host: x}\n",
            "plugins.postgres_backend: unknown key(s) 'connecton'; "
            "allowed: connection, handlers, pool, passwords",
        ),
        (
            "plugins:\n  postgres_backend:\n    connection: [localhost]\n",
            "plugins.postgres_backend.connection must be a mapping of libpq keywords",
        ),
        (
            "plugins:\n  postgres_backend:\n    connection: {hots: x}\n",
            "plugins.postgres_backend.connection: 'hots' is not a libpq connection keyword",
        ),
        (
            "plugins:\n  postgres_backend:\n    connection: {port: [1]}\n",
            "plugins.postgres_backend.connection.port must be a string or a number",
        ),
        (
            "plugins:\n  postgres_backend:\n    pool: {size: many}\n",
            "plugins.postgres_backend.pool.size must be a non-negative number",
        ),
        (
            "plugins:\n  postgres_backend:\n    passwords: {scheme: md5}\n",
            "plugins.postgres_backend.passwords.scheme: 'md5' is not allowed; "
            "allowed: bcrypt, argon2",
        ),
        (
            "plugins:\n  postgres_backend: [keys]\n",
            "plugins.postgres_backend must be a mapping",
        ),
        ("deactivate_defaults: [users]\n", "'deactivate_defaults' names unknown default plugin(s)"),
        ("plugin:\n  postgres_backend: {}\n", "unknown top-level key(s) 'plugin'"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        validate_everything(path)
    message = str(caught.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "plugins:\n  postgres_backend:\n    handlers: [keys\n")
    with pytest.raises(ConfigurationError, match=rf"{path}: line \d+"):
        StaticConfiguration.from_files([path])


def test_an_alias_bomb_in_a_plugin_file_is_refused_naming_it(tmp_path: Path) -> None:
    # Nine levels of nine aliases: a few hundred bytes that stand for 387 million strings.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        star = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([star] * 9)}]")
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigurationError, match=rf"{path}: refused: its aliases make it"):
        StaticConfiguration.from_files([path])


def test_a_missing_plugin_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"missing\.yml: cannot read plugin file"):
        StaticConfiguration.from_files([tmp_path / "missing.yml"])


def test_connection_from_url_keeps_libpq_keywords() -> None:
    settings = ConnectionSettings.from_url(
        "postgresql://alice:s3cret@db1:5433,db2:5434/omejdn?target_session_attrs=read-write"
    )
    assert settings.params["host"] == "db1,db2"
    assert settings.params["port"] == "5433,5434"
    assert settings.params["target_session_attrs"] == "read-write"
    assert "s3cret" not in repr(settings)
    assert settings.scrub("failed for s3cret") == "failed for ********"


def test_a_connection_string_given_as_dbname_is_expanded_and_its_password_masked() -> None:
    settings = ConnectionSettings(
        {"dbname": "postgresql://omejdn:hunter2@db.example.org:5433/omejdn", "user": "x"}
    )
    assert settings.params["dbname"] == "omejdn"
    assert settings.params["host"] == "db.example.org"
    assert settings.password == "hunter2"
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.describe()
    assert settings.scrub("failed: hunter2") == "failed: ********"
