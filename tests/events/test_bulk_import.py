"""Importing many users at once: staged by COPY, compared and written set-wise.

What an operator checks after ``omejdn-pg import``: every user stored (plain
SQL), their values coming back through an export, a second run changing
nothing (and writing nothing), a bad user anywhere in the file failing the
import with the file, the user and the field named, before any password is
hashed and with nothing written, a failure at the very end rolling everything
back, a user another writer stores meanwhile making the import plan again, the
Ruby plugin's TEXT values, and a server process with a read cache seeing the
imported changes. Every user is checked once. Users of another backend still
go through their events.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import bcrypt
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from omejdn_pg import PluginLoader
from omejdn_pg.entities import User
from omejdn_pg.errors import AlreadyExists, InvalidInput, StorageError
from omejdn_pg.host import events
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.repositories.attributes import checked_attributes
from omejdn_pg.postgres.repositories.users import UserRepository
from omejdn_pg.service import transfer
from omejdn_pg.service.host import Host
from omejdn_pg.service.transfer import apply as applying
from omejdn_pg.service.transfer import deployment as deployment_module
from omejdn_pg.settings.backend import BackendSettings, PasswordSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.strategies import PROPERTY_SETTINGS
from tests.kits.witness import PlainSQL

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
OTHER_HASH = bcrypt.hashpw(b"other", bcrypt.gensalt(4)).decode()
COUNT = 1500


def user(index: int, **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "username": f"user{index:05d}",
        "password": HASH,
        "attributes": {
            "name": f"User {index}",
            "email": f"user{index}@example.org",
            "email_verified": index % 2 == 0,
            "groups": ["staff", {"level": index % 7}],
        },
    }
    if index % 10 == 3:
        entry["extern"] = "https://idp.example.org"
    if index % 10 == 4:
        entry["consent"] = {"app": ["openid", "email"]}
    entry.update(changes)
    return entry


def write_users(directory: Path, users: list[dict[str, Any]]) -> Path:
    """One JSON value per list entry, as generators write a users.yml."""
    config = directory / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "users.yml").write_text("".join(f"- {json.dumps(u)}\n" for u in users))
    return directory


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    return write_users(tmp_path / "deployment", [user(i) for i in range(COUNT)])


def stored_attributes(plain_sql: PlainSQL, username: str) -> dict[str, Any]:
    return dict(
        plain_sql.rows(
            "SELECT key, value FROM attributes WHERE type = 'user' AND identifier = %s",
            (username,),
        )
    )


def writes(statements: list[str]) -> list[str]:
    verbs = ("INSERT", "UPDATE", "DELETE")
    return [s for s in statements if s.lstrip().split()[0].upper() in verbs]


def test_every_user_is_stored_in_a_constant_number_of_statements(
    deployment: Path, host: Host, plain_sql: PlainSQL, tmp_path: Path
) -> None:
    assert host.postgres is not None
    statements = count_statements(host.postgres.database.engine)

    report = transfer.import_deployment(deployment, host)

    assert report.counts()["users"] == {"create": COUNT, "update": 0, "unchanged": 0}
    assert plain_sql.value("SELECT count(*) FROM users") == COUNT
    assert plain_sql.value("SELECT count(*) FROM attributes WHERE type = 'user'") == 4 * COUNT
    assert plain_sql.value("SELECT count(*) FROM users WHERE extern IS NOT NULL") == COUNT // 10
    assert stored_attributes(plain_sql, "user00007") == user(7)["attributes"]
    assert len(statements) < 30  # not one per user
    exported = tmp_path / "exported"
    transfer.export_deployment(host, exported)
    assert sorted(FileStore(exported).read_section("users"), key=lambda u: u["username"]) == [
        user(i) for i in range(COUNT)
    ]


def test_a_second_import_changes_and_writes_nothing(
    deployment: Path, host: Host, plain_sql: PlainSQL
) -> None:
    transfer.import_deployment(deployment, host)
    versions = plain_sql.rows("SELECT username, xmin::text FROM users ORDER BY 1")
    assert host.postgres is not None
    statements = count_statements(host.postgres.database.engine)

    report = transfer.import_deployment(deployment, host)

    assert report.changed == []
    assert report.counts()["users"] == {"create": 0, "update": 0, "unchanged": COUNT}
    assert writes(statements) == []
    assert plain_sql.rows("SELECT username, xmin::text FROM users ORDER BY 1") == versions


def test_only_the_changed_users_are_written(
    deployment: Path, host: Host, plain_sql: PlainSQL
) -> None:
    transfer.import_deployment(deployment, host)
    # Attribute rows left behind by a user deleted elsewhere: a new user does not inherit them.
    plain_sql.execute(
        "INSERT INTO attributes VALUES ('user', 'newcomer', 'stale', '\"old\"'::jsonb)"
    )
    users = [user(i) for i in range(COUNT)]
    users[10] = user(10, password=OTHER_HASH)
    users[11]["attributes"]["email"] = "changed@example.org"
    del users[12]["attributes"]["groups"]
    users[13] = user(13, extern=True)
    users[14] = user(14, consent={})
    users[15]["attributes"]["name"] = "User 15"  # the same value: no change
    users.append({"username": "newcomer", "password": HASH, "attributes": {"fresh": 1}})
    write_users(deployment, users)
    untouched = plain_sql.value("SELECT xmin::text FROM users WHERE username = 'user00016'")

    report = transfer.import_deployment(deployment, host)

    assert [(c.name, c.action.value) for c in report.changed] == [
        ("user00010", "update"),
        ("user00011", "update"),
        ("user00012", "update"),
        ("user00013", "update"),
        ("user00014", "update"),
        ("newcomer", "create"),
    ]
    assert plain_sql.value("SELECT password FROM users WHERE username = 'user00010'") == OTHER_HASH
    assert stored_attributes(plain_sql, "user00011")["email"] == "changed@example.org"
    assert "groups" not in stored_attributes(plain_sql, "user00012")
    assert plain_sql.value("SELECT extern FROM users WHERE username = 'user00013'") == "true"
    assert plain_sql.value("SELECT consent FROM users WHERE username = 'user00014'") == {}
    assert stored_attributes(plain_sql, "newcomer") == {"fresh": 1}
    assert plain_sql.value("SELECT xmin::text FROM users WHERE username = 'user00016'") == untouched
    assert transfer.import_deployment(deployment, host).changed == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"attributes": {"note": "a\u0000b"}}, r"user 'user00700': attributes\.note: .*U\+0000"),
        ({"consent": {"app\u0000": 1}}, r"user 'user00700': consent: an object key .*U\+0000"),
        ({"attributes": {"ratio": float("nan")}}, r"user 'user00700': attributes\.ratio: nan"),
        ({"extern": ""}, r"user 'user00700': extern must be a non-empty string"),
        ({"password": "$2b$31$" + HASH[7:]}, r"user 'user00700': a bcrypt hash of cost 31"),
    ],
)
def test_a_bad_user_in_the_middle_names_the_field_and_writes_nothing(
    deployment: Path, host: Host, plain_sql: PlainSQL, bad: dict[str, Any], message: str
) -> None:
    users = [user(i) for i in range(COUNT)]
    users[700] = user(700, **bad)
    config = deployment / "config"
    # YAML, which can say what JSON cannot (NaN, a lone surrogate).
    (config / "users.yml").write_text(yaml.safe_dump(users, allow_unicode=False))

    with pytest.raises(InvalidInput, match=message) as raised:
        transfer.import_deployment(deployment, host)

    assert str(raised.value).startswith(f"{config / 'users.yml'}: ")
    assert HASH not in str(raised.value)
    assert plain_sql.value("SELECT count(*) FROM users") == 0
    assert plain_sql.value("SELECT count(*) FROM attributes") == 0


def test_every_user_is_checked_once(
    deployment: Path, host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    original = UserRepository.checked

    def counting(self: UserRepository, user: User) -> dict[str, Any]:
        checked.append(user.username)
        return original(self, user)

    values: list[object] = []
    monkeypatch.setattr(UserRepository, "checked", counting)
    monkeypatch.setattr(deployment_module, "check_json", lambda value, _field: values.append(value))

    transfer.import_deployment(deployment, host)

    assert sorted(checked) == [f"user{i:05d}" for i in range(COUNT)]
    assert values == []  # no second check of the same values while reading the file


_TEXT = st.text(alphabet=st.sampled_from(["a", "é", "\x00", "\ud800", "z"]), max_size=3)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(_TEXT, inner, max_size=2),
    max_leaves=6,
)


def _answer(check: Callable[[], Any]) -> Any:
    try:
        return check()
    except InvalidInput as error:
        return str(error)


@PROPERTY_SETTINGS
@given(st.dictionaries(_TEXT | st.integers(), _VALUES, max_size=4) | st.lists(_VALUES, max_size=2))
def test_an_imported_users_attributes_are_checked_as_one_create_checks_them(
    attributes: Any,
) -> None:
    # The import's check of many users takes a quicker way through the usual
    # attributes; what it accepts, and how it names a refusal, stay the same.
    checker = UserRepository(cast(Any, None))
    imported = _answer(lambda: checker.checked(User("u", attributes=attributes))["attribute_doc"])
    assert imported == _answer(lambda: checked_attributes(attributes, "user 'u'"))


def test_a_bad_user_fails_before_any_password_is_hashed(
    deployment: Path, host: Host, plain_sql: PlainSQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = [user(i) for i in range(COUNT)]
    users[3]["password"] = "plaintext, hashed on the way in"
    users[900] = user(900, attributes={"note": "a\u0000b"})
    write_users(deployment, users)
    policy = PasswordPolicy(PasswordSettings(bcrypt_rounds=4))
    hashed: list[str] = []
    monkeypatch.setattr(policy, "hash", lambda password: hashed.append(password) or HASH)

    with pytest.raises(InvalidInput, match=r"users\.yml: user 'user00900': attributes\.note"):
        transfer.import_deployment(deployment, host, policy=policy)

    assert hashed == []
    assert plain_sql.value("SELECT count(*) FROM users") == 0


def test_a_user_stored_meanwhile_makes_the_import_plan_again(
    deployment: Path, host: Host, plain_sql: PlainSQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = transfer.plan_import
    plans: list[int] = []

    def overtaken(*args: Any, **kwargs: Any) -> list[transfer.Change]:
        plan = original(*args, **kwargs)
        plans.append(len(plan))
        if len(plans) == 1:
            # Another writer stores one of the new users after the plan was made.
            plain_sql.execute(
                "INSERT INTO users (username, password) VALUES ('user00042', %s)", (OTHER_HASH,)
            )
        return plan

    monkeypatch.setattr(applying, "plan_import", overtaken)

    report = transfer.import_deployment(deployment, host)

    assert len(plans) == 2
    assert report.counts()["users"] == {"create": COUNT - 1, "update": 1, "unchanged": 0}
    assert plain_sql.value("SELECT count(*) FROM users") == COUNT
    assert plain_sql.value("SELECT password FROM users WHERE username = 'user00042'") == HASH
    assert stored_attributes(plain_sql, "user00042") == user(42)["attributes"]


def test_a_user_stored_meanwhile_every_time_is_named(
    deployment: Path, host: Host, plain_sql: PlainSQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = transfer.plan_import
    taken = iter(["user00042", "user00043", "user00044"])

    def overtaken(*args: Any, **kwargs: Any) -> list[transfer.Change]:
        plan = original(*args, **kwargs)
        plain_sql.execute(
            "INSERT INTO users (username, password) VALUES (%s, %s)", (next(taken), OTHER_HASH)
        )
        return plan

    monkeypatch.setattr(applying, "plan_import", overtaken)

    with pytest.raises(AlreadyExists, match="user 'user00044' exists already"):
        transfer.import_deployment(deployment, host)

    assert plain_sql.rows("SELECT username FROM users ORDER BY 1") == [
        ("user00042",),
        ("user00043",),
        ("user00044",),
    ]
    assert plain_sql.value("SELECT count(*) FROM attributes") == 0


def test_attributes_of_the_ruby_plugins_text_layout_read_back_the_same(
    deployment: Path, host: Host, plain_sql: PlainSQL
) -> None:
    # Omejdn's Ruby plugin keeps values as JSON text, not jsonb.
    plain_sql.execute("ALTER TABLE attributes ALTER COLUMN value TYPE text")

    transfer.import_deployment(deployment, host)

    for index in (0, 7, COUNT - 1):
        found = host.users.find(f"user{index:05d}")
        assert found is not None
        assert found.attributes == user(index)["attributes"]
    groups = plain_sql.value(
        "SELECT value FROM attributes WHERE identifier = 'user00007' AND key = 'groups'"
    )
    assert json.loads(groups) == ["staff", {"level": 0}]
    assert transfer.import_deployment(deployment, host).changed == []


def test_an_import_pauses_the_garbage_collector_only_while_it_imports(
    deployment: Path, host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    plan = transfer.plan_import

    def planning(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return plan(*args, **kwargs)

    monkeypatch.setattr(applying, "plan_import", planning)
    assert gc.isenabled()
    transfer.import_deployment(deployment, host)
    assert seen == [False]
    assert gc.isenabled()

    def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("an import failed")

    monkeypatch.setattr(applying, "plan_import", failing)
    with pytest.raises(RuntimeError):
        transfer.import_deployment(deployment, host)
    assert gc.isenabled()


def test_a_failure_after_the_users_rolls_back_every_user(
    deployment: Path, host: Host, plain_sql: PlainSQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer.import_deployment(deployment, host)
    changed = [user(i, attributes={"round": 2}) for i in range(COUNT)]
    write_users(deployment, [*changed, user(COUNT)])
    original = transfer.plan_import

    def failing_plan(*args: Any, **kwargs: Any) -> list[transfer.Change]:
        def fail(_host: Host) -> None:
            raise StorageError("simulated failure")

        plan = original(*args, **kwargs)
        return [*plan, transfer.Change("keys", "x/y", transfer.Action.CREATE, fail)]

    monkeypatch.setattr(applying, "plan_import", failing_plan)
    with pytest.raises(StorageError, match="simulated"):
        transfer.import_deployment(deployment, host)

    assert plain_sql.value("SELECT count(*) FROM users") == COUNT
    assert plain_sql.value("SELECT count(*) FROM attributes WHERE key = 'round'") == 0
    assert stored_attributes(plain_sql, "user00001") == user(1)["attributes"]


def test_a_dry_run_plans_the_same_and_writes_nothing(
    deployment: Path, host: Host, plain_sql: PlainSQL
) -> None:
    report = transfer.import_deployment(deployment, host, dry_run=True)

    assert report.counts()["users"] == {"create": COUNT, "update": 0, "unchanged": 0}
    assert plain_sql.value("SELECT count(*) FROM users") == 0
    assert plain_sql.value("SELECT count(*) FROM pg_tables WHERE tablename LIKE '%staged%'") == 0


def test_a_read_cache_sees_what_a_bulk_import_changed(
    deployment: Path, open_loader: Callable[[str], PluginLoader]
) -> None:
    cached = "{max_staleness: 0.5, user: true}"
    server = Host(open_loader(cached))  # another process, serving logins from its cache
    importer = Host(open_loader(cached))  # the importing process, with a cache of its own
    transfer.import_deployment(deployment, importer)
    for reader in (server, importer):
        found = reader.users.find("user00001")
        assert found is not None
        assert found.attributes["name"] == "User 1"
        assert reader.users.find("user00001") == found  # now from the cache
    users = [user(i) for i in range(COUNT)]
    users[1]["attributes"]["name"] = "Renamed"
    write_users(deployment, users)

    transfer.import_deployment(deployment, importer)

    renamed = importer.users.find("user00001")  # at once: the writer reads its write
    assert renamed is not None
    assert renamed.attributes["name"] == "Renamed"
    assert eventually(lambda: _name(server, "user00001") == "Renamed")


def _name(host: Host, username: str) -> Any:
    found = host.users.find(username)
    return found.attributes.get("name") if found is not None else None


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_users_of_the_file_backend_are_updated_there(
    database: ConnectionSettings, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    served = tmp_path / "served"
    FileStore(served).write_section("users", [user(1), user(2)])
    deployment = write_users(tmp_path / "deployment", [user(1, password=OTHER_HASH), user(3)])
    settings = BackendSettings(connection=database)
    with Host.from_settings(settings, defaults=frozenset({"user"}), base_dir=served) as host:
        loads: list[str] = []
        host.loader.register(events.USER_GET_ALL, lambda **_: loads.append("asked"))

        report = transfer.import_deployment(deployment, host)

    assert [(c.name, c.action.value) for c in report.changed] == [
        ("user00001", "update"),
        ("user00003", "create"),
    ]
    in_files = {u["username"]: u for u in FileStore(served).read_section("users")}
    assert in_files["user00001"]["password"] == OTHER_HASH
    assert plain_sql.rows("SELECT username FROM users") == [("user00003",)]
    assert loads == ["asked"]  # every other backend's users, asked once


def test_a_role_that_may_not_create_temporary_tables_imports_one_by_one(
    database: ConnectionSettings, app_role: str, deployment: Path, plain_sql: PlainSQL
) -> None:
    migrate.grant(database, app_role)
    dbname = plain_sql.value("SELECT current_database()")
    plain_sql.execute(f'REVOKE TEMPORARY ON DATABASE "{dbname}" FROM PUBLIC')
    write_users(deployment, [user(i) for i in range(20)])
    settings = BackendSettings(connection=database.with_params(user=app_role))
    with Host.from_settings(settings) as host:
        assert host.users.bulk() is not None
        assert host.postgres is not None
        statements = count_statements(host.postgres.database.engine)

        report = transfer.import_deployment(deployment, host)

    assert report.counts()["users"] == {"create": 20, "update": 0, "unchanged": 0}
    assert plain_sql.value("SELECT count(*) FROM users") == 20
    assert not any("TEMPORARY TABLE" in statement for statement in statements)
