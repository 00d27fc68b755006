"""The wheel carries its migrations: an installed copy migrates from any directory.

Builds the wheel, installs it into a fresh virtual environment outside the
repository (dependencies come from the package index; pip's cache keeps this
to seconds after the first run) and migrates a database from a directory with
no ``alembic.ini`` and no source tree in sight.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

from omejdn_pg.postgres import migrate
from omejdn_pg.settings.connection import ConnectionSettings

REPO = Path(__file__).resolve().parents[2]


def run(
    args: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_installed_wheel_migrates_from_anywhere(
    tmp_path: Path, empty_database: ConnectionSettings
) -> None:
    assert not tmp_path.is_relative_to(REPO)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, REPO])
    (wheel,) = dist.glob("omejdn_pg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {
        "omejdn_pg/postgres/migrate.py",
        "omejdn_pg/alembic/env.py",
        "omejdn_pg/alembic/script.py.mako",
        "omejdn_pg/alembic/versions/0001_baseline.py",
        "omejdn_pg/bridge/ruby/omejdn_pg.rb",  # Omejdn's plugin, for `omejdn-pg bridge install`
    } <= names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "OMEJDN_PG_URL", "OMEJDN_PLUGINS", "VIRTUAL_ENV")
    }
    where = run(
        [
            python,
            "-c",
            "import omejdn_pg.postgres.migrate as m; print(m.__file__); print(m.script_location())",
        ],
        cwd=elsewhere,
        env=env,
    )
    module_file, scripts = where.stdout.split()
    assert Path(module_file).is_relative_to(venv)
    assert Path(scripts).is_relative_to(venv)

    done = run(
        [venv / "bin" / "omejdn-pg", "--url", empty_database.conninfo(), "migrate"],
        cwd=elsewhere,
        env=env,
    )
    assert done.stdout.strip().endswith(f"upgraded from none (empty database) to {migrate.head()}")

    with psycopg.connect(empty_database.conninfo()) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        ).fetchall()
        version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert [t for (t,) in tables] == [
        "alembic_version",
        "attributes",
        "clients",
        "keys",
        "omejdn_pg_changes",
        "users",
    ]
    assert version == [(migrate.head(),)]
