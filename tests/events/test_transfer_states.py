"""Export says what Omejdn's file layout cannot carry; import keeps the state of keys it finds.

A key set mid-rotation (a retired key, the signer, a next key) is exported:
the files are written, and one warning per kind names ``omejdn-pg backup``.
Imported back into the same database, no key changes state — checked with
plain SQL, dates included — whether the files hold the private keys of the
retired and next keys or not.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from omejdn_pg.host.files.store import FileStore
from omejdn_pg.service import transfer
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BackendSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import ok, omejdn_pg
from tests.kits.witness import PlainSQL

NOW = datetime.datetime.now(datetime.UTC)
STATES = (
    "SELECT kid, state, activate_at, retired_at, destroy_at, position FROM keys "
    "WHERE target_type = 'omejdn' AND target = 'omejdn' AND type LIKE '%%sk' ORDER BY kid"
)


def mid_rotation(host: Host) -> dict[str, str]:
    """A retired key, the signer and a next key: ``{kid: state}``."""
    first = host.keys.signing_key()
    host.keys.rotate("omejdn", "omejdn", publish_for=datetime.timedelta(0), now=NOW)
    host.keys.maintain(now=NOW)
    upcoming = host.keys.rotate("omejdn", "omejdn", now=NOW)
    states = {key.kid: key.state for key in host.keys.stored("omejdn", "omejdn")}
    assert states[first.kid] == "retired"
    assert states[upcoming.kid] == "next"
    assert sorted(states.values()) == ["active", "next", "retired"]
    return states


def test_export_warns_once_per_kind_and_import_back_keeps_every_state(
    any_host: Host, plain_sql: PlainSQL, tmp_path: Path
) -> None:
    states = mid_rotation(any_host)
    before = plain_sql.rows(STATES)
    out = tmp_path / "out"

    report = transfer.export_deployment(any_host, out)

    warnings = [note for note in report.notes if note.startswith("warning:")]
    sealed = bool(any_host.postgres and any_host.postgres.keyring)
    assert len(warnings) == (3 if sealed else 2)
    assert all("omejdn-pg backup" in line for line in warnings)
    assert "2 keys are in a lifecycle state" in warnings[0]
    assert "2 keys are exported as public keys only" in warnings[1]
    if sealed:
        assert "3 keys are sealed" in warnings[2]
    exported = FileStore(out).load_keys("omejdn", "omejdn")
    assert {key.kid for key in exported} == set(states)  # the layout is still written

    assert transfer.import_deployment(out, any_host).changed == []
    assert plain_sql.rows(STATES) == before

    # Even with the private keys of the retired and next keys in the files (an
    # older export, or an operator's copy), they stay retired and next.
    for key in any_host.keys.stored("omejdn", "omejdn"):
        (out / "keys" / "omejdn" / f"omejdn.{key.kid}.key").write_text(key.key_pem() or "")
    # No change either: their private keys are stored, which the import asks of the
    # Host's lifecycle read, sealed or not (so the backend's keyring opens them).
    assert transfer.import_deployment(out, any_host).changed == []
    assert plain_sql.rows(STATES) == before
    signer = any_host.keys.signing_key()
    assert states[signer.kid] == "active"
    # And the lifecycle goes on: the retired key still expires, the next key activates.
    later = NOW + datetime.timedelta(days=400)
    changes = {(c.kid, c.change) for c in any_host.keys.maintain(now=later)}
    retired = next(kid for kid, state in states.items() if state == "retired")
    upcoming = next(kid for kid, state in states.items() if state == "next")
    assert (retired, "destroyed") in changes
    assert (upcoming, "activated") in changes


def test_an_export_of_active_keys_only_warns_of_nothing(any_host: Host, tmp_path: Path) -> None:
    any_host.keys.signing_key()
    report = transfer.export_deployment(any_host, tmp_path / "out")
    warnings = [note for note in report.notes if note.startswith("warning:")]
    sealed = bool(any_host.postgres and any_host.postgres.keyring)
    assert len(warnings) == (1 if sealed else 0)


def test_the_export_command_prints_the_warnings_on_stderr(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    with Host.from_settings(BackendSettings(connection=database)) as facade:
        mid_rotation(facade)
    result = ok(omejdn_pg("--url", database.conninfo(), "export", str(tmp_path / "out")))
    lines: list[Any] = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(lines) == 2
    assert all("omejdn-pg backup" in line for line in lines)
    assert "warning" not in result.stdout
