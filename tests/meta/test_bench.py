"""The benchmark still works: ``python -m bench --quick`` end to end, as CI runs it.

This asserts that the bench ran and wrote what it promises — every row with
numbers, the cached rows as labelled placeholders, a PNG — and that the
correctness checks built into it held (no errors under threads, a re-import
that changes nothing). It never asserts a timing: CI machines are shared.

It runs the bench as a subprocess from the repository root, on its own
embedded server, or on the suite's server when ``OMEJDN_PG_TEST_DSN`` names one
(so CI's second run covers ``OMEJDN_PG_BENCH_DSN`` too).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LATENCY_ROWS = [
    "USER_GET",
    "CLIENT_GET",
    "KEYS_LOAD",
    "CONFIGURATION_LOAD",
    "token request",
    "login",
    "USER_UPDATE",
    "CLIENT_UPDATE",
    "PASSWORD_CHANGE",
    "CONFIGURATION_STORE",
    "KEYS_STORE",
    "USER_GET_ALL",
    "CLIENT_GET_ALL",
]
QUICK_USERS = 500


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: Any) -> bool:
    return is_number(value) and value > 0


def assert_timed(side: dict[str, Any], what: str) -> None:
    for key in ("median_us", "p99_us", "mean_us"):
        assert positive(side[key]), f"{what}: {key} = {side[key]!r}"
    assert side["calls"] >= 3, what


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-results")
    env = {k: v for k, v in os.environ.items() if k != "OMEJDN_PG_BENCH_DSN"}
    if os.environ.get("OMEJDN_PG_TEST_DSN"):
        env["OMEJDN_PG_BENCH_DSN"] = os.environ["OMEJDN_PG_TEST_DSN"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert "Latency" in done.stdout  # the table was printed
    return out


@pytest.fixture(scope="module")
def results(quick_run: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((quick_run / "latest-quick.json").read_text())
    return loaded


pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_it_writes_a_timestamped_json_and_png_and_the_latest_copies(quick_run: Path) -> None:
    stamped = sorted(p.name for p in quick_run.iterdir() if p.name[0].isdigit())
    assert len(stamped) == 2, stamped
    assert {Path(name).suffix for name in stamped} == {".json", ".png"}
    assert all(name.endswith(("-quick.json", "-quick.png")) for name in stamped)
    for png in (quick_run / stamped[1], quick_run / "latest-quick.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE), png
        assert len(data) > 10_000, png


def test_the_run_is_described(results: dict[str, Any]) -> None:
    assert results["kind"] == "quick"
    assert results["parameters"]["users"] == QUICK_USERS
    assert results["parameters"]["clients"] == 1000
    assert results["server"]["server_version"]
    assert results["machine"]["cores"] >= 1
    assert positive(results["seeding"]["users_s"])
    assert positive(results["seeding"]["rest_s"])


def test_the_bench_and_its_embedded_server_run_on_cores_of_their_own(
    results: dict[str, Any],
) -> None:
    placement = results["placement"]
    if results["server"]["kind"] != "embedded (pgserver)" or len(os.sched_getaffinity(0)) < 2:
        assert placement["bench_cores"] is None
        assert placement["reason"]
        return
    assert placement["bench_cores"]
    assert placement["server_cores"]
    assert not set(placement["bench_cores"]) & set(placement["server_cores"])
    # A backend forked while the bench ran had the servers' cores, not the bench's.
    assert placement["backend_cores"] == placement["server_cores"]


def test_every_event_has_numbers_beside_its_floor(results: dict[str, Any]) -> None:
    rows = {row["name"]: row for row in results["latency"]}
    assert list(rows) == LATENCY_ROWS
    for name, row in rows.items():
        assert row["statements"] >= 1, name
        assert_timed(row["ours"], f"{name} ours")
        assert_timed(row["floor"], f"{name} floor")
        assert positive(row["ratio_median"]), name
        assert positive(row["ratio_p99"]), name
    for name in ("USER_GET_ALL", "CLIENT_GET_ALL"):
        assert_timed(rows[name]["n_plus_1"], f"{name} N+1")
        assert is_number(rows[name]["n_plus_1_over_ours"])
    for name in ("USER_GET", "CLIENT_GET", "KEYS_LOAD", "CONFIGURATION_LOAD"):
        assert rows[name]["sql"], f"{name}: the captured SQL is recorded"
    # A write's floor waits for BEGIN, each statement and COMMIT; the package sends
    # independent statements together, so it never waits more often.
    for name in ("USER_UPDATE", "CLIENT_UPDATE", "CONFIGURATION_STORE", "KEYS_STORE"):
        waits = rows[name]["round_trips"]
        assert waits["floor"] == rows[name]["statements"] + 2, name
        assert 3 <= waits["ours"] < waits["floor"], name
    assert rows["USER_UPDATE"]["round_trips"] == {"ours": 3, "floor": 5}


def test_reads_beyond_one_server_are_measured_or_say_why(results: dict[str, Any]) -> None:
    beyond = results["topologies"]
    # Each topology row holds numbers, or says why this machine could not run it.
    assert {"standby", "pgbouncer"} <= set(beyond["rows"]) | set(beyond["skipped"])
    for label, row in beyond["rows"].items():
        assert positive(row["p50_us"]), label
        assert positive(row["ratio"]), label
    assert all(beyond["skipped"].values())


def test_cached_rows_are_measured_or_labelled_placeholders(results: dict[str, Any]) -> None:
    cached = results["cached"]
    assert {row["name"] for row in cached["rows"]} >= {"USER_GET", "CLIENT_GET"}
    if not cached["available"]:
        assert "no read cache" in cached["note"]
    for row in cached["rows"]:
        for key in ("median_us", "p99_us", "ratio_to_floor"):
            if cached["available"]:
                assert positive(row[key]), (row["name"], key)
            else:
                assert row[key] is None, (row["name"], key)


def test_a_write_is_timed_until_another_process_sees_it(results: dict[str, Any]) -> None:
    found = results["staleness"]
    assert found["writes"] == results["parameters"]["staleness_writes"] > 0
    for key in ("p50_s", "p99_s", "max_s"):
        assert is_number(found[key]), key  # a notice may overtake the commit's reply: < 0
    assert found["p50_s"] <= found["p99_s"] <= found["max_s"]
    assert positive(found["max_staleness_s"])
    assert positive(found["reader"]["hits"])
    assert is_number(found["reader"]["notices"])


def test_threads_ran_without_errors(results: dict[str, Any]) -> None:
    rows = results["throughput"]["rows"]
    assert [row["threads"] for row in rows if row["pool"].startswith("default")] == [1, 4, 8]
    for row in rows:
        for side in ("ours", "floor"):
            if row[side] is None:
                continue
            assert row[side]["errors"] == 0, row[side]["first_error"]
            assert positive(row[side]["operations"])
            assert positive(row[side]["ops_per_s"])


def test_writers_of_their_own_users_ran_beside_their_floor(results: dict[str, Any]) -> None:
    found = results["writers"]
    assert [row["writers"] for row in found["rows"]] == [1, 16]
    for row in found["rows"]:
        assert row["errors"] == 0, row
        assert positive(row["ours_ops_per_s"]), row
        assert positive(row["floor_ops_per_s"]), row
        assert positive(row["ratio"]), row


def test_import_and_a_reimport_that_changes_nothing(results: dict[str, Any]) -> None:
    main = results["import"]
    assert main["users"] == QUICK_USERS
    assert main["changes"] == QUICK_USERS
    assert main["reimport_changes"] == 0
    for key in ("seconds", "users_per_s", "reimport_seconds", "startup_s"):
        assert positive(main[key]), key


def test_growth_series_cover_every_size(results: dict[str, Any]) -> None:
    sizes = [200, QUICK_USERS, 1000]
    growth = results["growth"]
    assert [row["users"] for row in growth["get_all"]] == sizes
    assert [row["users"] for row in growth["import"]] == sizes
    for row in growth["get_all"]:
        for key in ("ours_s", "floor_s", "n_plus_1_s", "ratio_to_floor"):
            assert positive(row[key]), (row["users"], key)
    for row in growth["import"]:
        assert row["reimport_changes"] == 0, row


def test_point_reads_are_profiled_by_layer(results: dict[str, Any]) -> None:
    for name in ("USER_GET", "CLIENT_GET"):
        found = results["profile"][name]
        assert found["calls"] > 0
        assert sum(found["shares"].values()) == pytest.approx(1.0, abs=0.02)
        assert found["top_tottime"], name
        layers = found["layers"]
        assert layers[0]["layer"].startswith("raw psycopg"), layers
        assert len(layers) == 5, layers  # three layers of the read, two of SQLAlchemy's path
        assert all(positive(row["median_us"]) for row in layers), layers


def test_events_through_the_storage_service_beside_in_process(results: dict[str, Any]) -> None:
    found = results["bridge"]
    cases = {row["case"] for row in found["rows"]}
    assert {"CONFIGURATION_LOAD", "CLIENT_GET", "KEYS_LOAD", "token request (11 events)"} <= cases
    for row in found["rows"]:
        for key in ("socket_p50_us", "socket_p99_us"):
            assert positive(row[key]), (row["case"], key)
        # In process, "hello" is nothing at all: it rounds to 0.0 µs.
        for key in ("in_process_p50_us", "in_process_p99_us"):
            assert is_number(row[key]), (row["case"], key)
            assert row[key] >= 0, (row["case"], key)
    assert [row["threads"] for row in found["token_requests"]] == [1, 4, 8]
    for row in found["token_requests"]:
        assert row["errors"] == 0, row
        assert positive(row["ops_per_s"]), row


def test_every_output_format_lists_every_user_timed_in_turns(results: dict[str, Any]) -> None:
    found = results["output_formats"]
    assert found["users"] == results["parameters"]["listing_users"] == QUICK_USERS
    assert found["runs"] >= 3
    rows = {row["format"]: row for row in found["rows"]}
    assert list(rows) == ["json", "yaml", "table"]
    for name, row in rows.items():
        assert len(row["runs_s"]) == found["runs"], name
        assert all(positive(value) for value in row["runs_s"]), name
        assert row["min_s"] <= row["median_s"] <= row["max_s"], name
        assert positive(row["users_per_s"]), name
        assert row["bytes"] > QUICK_USERS * 20, name  # the check run's whole listing
    assert rows["json"]["over_json"] == 1.0
    assert found["yaml_over_json"] == rows["yaml"]["over_json"]
    assert found["table_over_json"] == rows["table"]["over_json"]
    # The acceptance is recorded, not asserted: CI's timings are not the machine's.
    assert found["yaml_within_2x_json"] is (found["yaml_over_json"] <= found["yaml_bound"])


def test_a_plaintext_import_is_timed_with_one_and_two_hashing_workers(
    results: dict[str, Any],
) -> None:
    found = results["plaintext_import"]
    users = results["parameters"]["plaintext_users"]
    assert found["users"] == users > 0
    assert found["bcrypt_cost"] >= 10  # hashing is most of the command
    assert [row["workers"] for row in found["rows"]] == [1, 2]
    for row in found["rows"]:
        assert row["changes"] == users, row
        assert row["reimport_changes"] == 0, row
        for key in ("seconds", "users_per_s", "reimport_seconds", "reimport_users_per_s"):
            assert positive(row[key]), (row["workers"], key)
    assert positive(found["speedup"])
    assert positive(found["reimport_speedup"])
    # The import ran on every core of the run, not on the bench's one.
    placement = results["placement"]
    if placement["bench_cores"]:
        assert found["import_cores"] == sorted(
            set(placement["bench_cores"]) | set(placement["server_cores"])
        )
    assert found["usable_cores"] == len(found["import_cores"]) >= 1
