"""Four processes importing overlapping deployment directories at the same time.

Each directory holds some users of its own and many that the others hold too,
each with attributes naming the directory. Every import is one transaction;
one that finds its plan overtaken by another import's commit plans again. The
end state: every user is exactly one directory's version of it (attributes
counted with plain SQL), nothing duplicated, no error reaching an operator.
"""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt
import pytest

from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import omejdn_pg
from tests.kits.threads import run_together
from tests.kits.witness import PlainSQL

PROCESSES = 4
HASH = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()


def write_deployment(root: Path, index: int) -> Path:
    directory = root / f"deployment{index}"
    (directory / "config").mkdir(parents=True)
    shared = [f"shared{n:02d}" for n in range(40)]
    own = [f"only{index}-{n}" for n in range(5)]
    users = [
        {
            "username": name,
            "password": HASH,
            "attributes": {"from": index, **{f"a{k}": f"{index}-{k}" for k in range(1 + index)}},
        }
        for name in shared + own
    ]
    (directory / "config" / "users.yml").write_text(json.dumps(users))
    (directory / "config" / "omejdn.yml").write_text(json.dumps({"issuer": f"https://{index}"}))
    return directory


@pytest.mark.slow
def test_overlapping_imports_leave_whole_versions_of_every_user(
    database: ConnectionSettings, plain_sql: PlainSQL, tmp_path: Path
) -> None:
    directories = [write_deployment(tmp_path, i) for i in range(PROCESSES)]
    url = database.conninfo()
    results = run_together(
        PROCESSES, lambda i: omejdn_pg("--url", url, "import", str(directories[i]))
    )
    for result in results:
        assert not isinstance(result, BaseException), result
        assert result.returncode == 0, result.stderr
        assert "duplicate key" not in result.stderr
        assert "deadlock" not in result.stderr

    users = plain_sql.rows("SELECT username FROM users ORDER BY 1")
    expected = sorted(
        {f"shared{n:02d}" for n in range(40)}
        | {f"only{i}-{n}" for i in range(PROCESSES) for n in range(5)}
    )
    assert [name for (name,) in users] == expected
    for (name,) in users:
        attributes = dict(
            plain_sql.rows(
                "SELECT key, value FROM attributes WHERE type = 'user' AND identifier = %s",
                (name,),
            )
        )
        index = attributes["from"]
        assert attributes == {"from": index, **{f"a{k}": f"{index}-{k}" for k in range(1 + index)}}
        if name.startswith("only"):
            assert name.startswith(f"only{index}-")
    issuer = plain_sql.value("SELECT value FROM configuration_omejdn WHERE key = 'issuer'")
    assert issuer in {f"https://{i}" for i in range(PROCESSES)}
