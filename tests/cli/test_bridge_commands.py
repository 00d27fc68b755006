"""``omejdn-pg bridge path|install``: the shipped Ruby plugin, and putting it where Omejdn loads it.

Also that the plugin is Ruby Omejdn can load: it parses (``ruby -c``) and
requires nothing outside Ruby's standard library.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.cluster.ruby.harness import ruby
from tests.kits.commands import REPO, ok, omejdn_pg, one_error_line, python_m

SHIPPED = REPO / "omejdn_pg" / "bridge" / "ruby" / "omejdn_pg.rb"


def omejdn_dir(path: Path) -> Path:
    (path / "lib").mkdir(parents=True)
    (path / "omejdn.rb").write_text("# Omejdn\n")
    (path / "lib" / "plugins.rb").write_text("# PluginLoader\n")
    return path


def test_path_names_the_shipped_plugin() -> None:
    printed = ok(omejdn_pg("bridge", "path")).stdout.strip()
    assert Path(printed).read_bytes() == SHIPPED.read_bytes()


def test_install_writes_where_omejdns_plugin_loader_requires_it(tmp_path: Path) -> None:
    target = omejdn_dir(tmp_path / "omejdn")
    done = ok(omejdn_pg("bridge", "install", str(target)))
    installed = target / "plugins" / "omejdn_pg" / "omejdn_pg.rb"
    assert done.stdout.strip() == f"installed: {installed}"
    assert installed.read_bytes() == SHIPPED.read_bytes()
    assert installed.stat().st_mode & 0o777 == 0o644

    # Idempotent: the same file again changes nothing.
    mtime = installed.stat().st_mtime_ns
    again = ok(omejdn_pg("bridge", "install", str(target)))
    assert again.stdout.strip() == f"already installed: {installed}"
    assert installed.stat().st_mtime_ns == mtime


def test_a_different_plugin_file_is_kept_unless_forced(tmp_path: Path) -> None:
    target = omejdn_dir(tmp_path / "omejdn")
    installed = target / "plugins" / "omejdn_pg" / "omejdn_pg.rb"
    installed.parent.mkdir(parents=True)
    installed.write_text("# a local edit\n")
    line = one_error_line(omejdn_pg("bridge", "install", str(target)))
    assert "differs from this release's plugin; use --force" in line
    assert installed.read_text() == "# a local edit\n"

    ok(omejdn_pg("bridge", "install", "--force", str(target)))
    assert installed.read_bytes() == SHIPPED.read_bytes()
    assert sorted(p.name for p in installed.parent.iterdir()) == ["omejdn_pg.rb"]


def test_a_directory_that_is_not_omejdns_is_refused(tmp_path: Path) -> None:
    line = one_error_line(omejdn_pg("bridge", "install", str(tmp_path)))
    assert "is not an Omejdn directory" in line
    assert not (tmp_path / "plugins").exists()


def test_the_plugin_is_valid_ruby_needing_only_the_standard_library() -> None:
    checked = subprocess.run(
        [ruby(), "-c", str(SHIPPED)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    required = set(re.findall(r"^\s*require\s+'([^']+)'", SHIPPED.read_text(), re.MULTILINE))
    assert required == {"socket", "json", "io/wait"}


def test_the_upstream_runs_skip_with_their_reason_without_the_checkouts(tmp_path: Path) -> None:
    for command in ("suite", "tokens", "events", "live"):
        done = ok(
            python_m(
                "bench.upstream",
                command,
                "--omejdn",
                str(tmp_path / "omejdn-server"),
                "--jwt",
                str(tmp_path / "ruby-jwt"),
                cwd=REPO,
            )
        )
        assert done.stdout.strip() == (
            f"skipped: no Omejdn checkout at {tmp_path / 'omejdn-server'} (omejdn.rb missing)"
        )
