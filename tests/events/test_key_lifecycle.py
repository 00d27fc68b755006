"""The key lifecycle's rules end to end: tokens signed with the key ``KEYS_LOAD`` returns,
verified by two independent JOSE libraries (PyJWT, joserfc) against the ``KEYS_LOAD_ALL``
JWK Set, through the CLI with real short windows and through the host with a clock of
the test's own.

The first two tests are the two scenarios that were wrong: a rotation to another
algorithm that never took over, and a late ``keys maintain`` that destroyed a key whose
tokens were still valid.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from joserfc import jwk as jose_jwk
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError

from omejdn_pg import PluginLoader
from omejdn_pg.host import events
from omejdn_pg.lifecycle import TooEarly
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.certificates import self_signed
from tests.kits.commands import ok, omejdn_pg, one_error_line
from tests.kits.plugins import plugin_file
from tests.kits.witness import PlainSQL

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)
SECOND = datetime.timedelta(seconds=1)


# --- the JOSE oracles -------------------------------------------------------------------


def signing_jwk(loader: PluginLoader, target: str = "omejdn") -> dict[str, Any]:
    """What Omejdn's core signs with: the first private ``sig`` key of KEYS_LOAD."""
    for answer in loader.fire(events.KEYS_LOAD, target_type="omejdn", target=target):
        for jwk in (answer or {}).get("keys", []):
            if "d" in jwk and jwk.get("use", "sig") == "sig":
                return dict(jwk)
    raise AssertionError(f"KEYS_LOAD omejdn/{target} has no signing key")


def published_jwks(loader: PluginLoader) -> dict[str, Any]:
    """KEYS_LOAD_ALL of ``omejdn``: what ``/jwks.json`` publishes."""
    keys = [
        jwk
        for answer in loader.fire(events.KEYS_LOAD_ALL, target_type="omejdn")
        for jwk in (answer or {}).get("keys", [])
    ]
    assert all("d" not in jwk for jwk in keys)
    return {"keys": keys}


def issue_tokens(jwk: dict[str, Any], lifetime: float = 3600) -> list[str]:
    """One token signed by PyJWT and one by joserfc with ``jwk``, valid for ``lifetime``."""
    now = int(time.time())
    claims = {"iss": "https://id.example", "sub": "alice", "iat": now, "exp": now + lifetime}
    key = pyjwt.PyJWK(jwk)
    by_pyjwt = pyjwt.encode(claims, key.key, algorithm=jwk["alg"], headers={"kid": jwk["kid"]})
    by_joserfc = jose_jwt.encode(
        {"alg": jwk["alg"], "kid": jwk["kid"]}, claims, jose_jwk.import_key(jwk)
    )
    return [by_pyjwt, by_joserfc]


def verifies(token: str, jwks: dict[str, Any]) -> bool:
    """Whether both libraries accept ``token`` (signature and expiry) against ``jwks``;
    they must agree."""
    header = pyjwt.get_unverified_header(token)
    try:
        found = pyjwt.PyJWKSet.from_dict(jwks)[header["kid"]]
        pyjwt.decode(token, found.key, algorithms=[header["alg"]], options={"verify_aud": False})
        by_pyjwt = True
    except (KeyError, pyjwt.PyJWTError):
        by_pyjwt = False
    try:
        decoded = jose_jwt.decode(token, jose_jwk.KeySet.import_key_set(jwks))
        jose_jwt.JWTClaimsRegistry().validate(decoded.claims)
        by_joserfc = True
    except (JoseError, ValueError, LookupError):
        by_joserfc = False
    assert by_pyjwt == by_joserfc, (header, by_pyjwt, by_joserfc)
    return by_pyjwt


# --- fixtures ---------------------------------------------------------------------------


def write_config(database: ConnectionSettings, path: Path, lifecycle: str = "") -> Path:
    backend = f"      key_lifecycle: {{{lifecycle}}}\n" if lifecycle else ""
    return plugin_file(path, database, backend=backend)


def cli(config: Path, *args: str) -> Any:
    return omejdn_pg("--config", str(config), "keys", *args)


def listed(config: Path) -> dict[str, dict[str, Any]]:
    return {k["kid"]: k for k in json.loads(ok(cli(config, "list", "--json")).stdout)}


def short_lifetimes(host: Host, seconds: int) -> None:
    host.config.write(
        "omejdn",
        {
            "issuer": "https://id.example",
            "access_token": {"expiration": seconds},
            "id_token": {"expiration": seconds},
        },
    )


# --- the two scenarios of the report ----------------------------------------------------


def test_an_es256_rotation_of_an_rs256_signer_takes_over_through_the_cli(
    database: ConnectionSettings, tmp_path: Path, plugin_host: Host, loader: PluginLoader
) -> None:
    config = write_config(database, tmp_path / "cli.yml", "retire_margin: 1s")
    short_lifetimes(plugin_host, 60)
    ok(cli(config, "generate", "omejdn", "omejdn"))
    rs256 = signing_jwk(loader)
    assert rs256["alg"] == "RS256"
    old_tokens = issue_tokens(rs256)
    assert all(verifies(t, published_jwks(loader)) for t in old_tokens)

    rotated = ok(cli(config, "rotate", "omejdn", "omejdn", "--alg", "ES256", "--publish-for", "2s"))
    assert "is next" in rotated.stdout
    (es256,) = [kid for kid in listed(config) if kid != rs256["kid"]]
    still = signing_jwk(loader)
    assert still["kid"] == rs256["kid"]  # published, not signing yet
    time.sleep(2.2)

    maintained = ok(cli(config, "maintain"))
    assert f"{es256} activated" in maintained.stdout
    assert f"{rs256['kid']} retired" in maintained.stdout
    states = {kid: key["state"] for kid, key in listed(config).items()}
    assert states == {es256: "active", rs256["kid"]: "retired"}
    now_signing = signing_jwk(loader)
    assert (now_signing["kid"], now_signing["alg"]) == (es256, "ES256")
    new_tokens = issue_tokens(now_signing)
    jwks = published_jwks(loader)
    assert all(verifies(t, jwks) for t in [*old_tokens, *new_tokens])
    assert ok(cli(config, "maintain")).stdout == ""  # nothing more is due


def test_a_maintain_three_hours_late_keeps_the_old_key_until_its_tokens_expire(
    plugin_host: Host, loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    # Omejdn's defaults: tokens live 1 h, the margin is 1 h, so a retired key stays 2 h.
    first = plugin_host.keys.load("omejdn", "omejdn", create=True)[0]
    second = plugin_host.keys.rotate("omejdn", "omejdn", publish_for=48 * HOUR, now=NOW)
    # The timer was stopped: nothing ran at 48 h. Tokens signed by the first key
    # until the late run are valid for an hour after it.
    late = NOW + 51 * HOUR
    jwk = signing_jwk(loader)
    assert jwk["kid"] == first.kid
    tokens = issue_tokens(jwk)

    changes = plugin_host.keys.maintain(now=late)
    assert [(c.kid, c.change) for c in changes] == [
        (second.kid, "activated"),
        (first.kid, "retired"),
    ]
    assert all(verifies(t, published_jwks(loader)) for t in tokens)
    retired_at, destroy_at = plain_sql.rows(
        "SELECT DISTINCT retired_at, destroy_at FROM keys WHERE kid = %s", (first.kid,)
    )[0]
    assert retired_at == late
    assert destroy_at == late + 2 * HOUR
    assert plugin_host.keys.maintain(now=late + 2 * HOUR - SECOND) == []
    assert first.kid in {k["kid"] for k in published_jwks(loader)["keys"]}
    gone = plugin_host.keys.maintain(now=late + 2 * HOUR)
    assert [(c.kid, c.change) for c in gone] == [(first.kid, "destroyed")]


def test_an_es256_rotation_takes_over_on_a_simulated_clock(
    plugin_host: Host, loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    first = plugin_host.keys.load("omejdn", "omejdn", create=True)[0]
    assert first.alg == "RS256"
    second = plugin_host.keys.rotate("omejdn", "omejdn", "ES256", publish_for=48 * HOUR, now=NOW)
    assert plugin_host.keys.maintain(now=NOW + 48 * HOUR - SECOND) == []
    assert signing_jwk(loader)["kid"] == first.kid
    changes = plugin_host.keys.maintain(now=NOW + 48 * HOUR)
    assert [(c.kid, c.change) for c in changes] == [
        (second.kid, "activated"),
        (first.kid, "retired"),
    ]
    assert (signing_jwk(loader)["kid"], signing_jwk(loader)["alg"]) == (second.kid, "ES256")
    assert plain_sql.value("SELECT kid FROM keys WHERE type = 'sk'") == second.kid
    assert plugin_host.keys.maintain(now=NOW + 48 * HOUR) == []


def test_a_late_maintain_through_the_cli_with_real_windows(
    database: ConnectionSettings, tmp_path: Path, plugin_host: Host, loader: PluginLoader
) -> None:
    # Tokens live 4 s and the margin is 2 s: a retired key stays 6 s. The rotation is
    # due after 1 s; maintain comes 8 s after that, later than the whole window.
    config = write_config(database, tmp_path / "cli.yml", "retire_margin: 2s")
    short_lifetimes(plugin_host, 4)
    ok(cli(config, "generate", "omejdn", "omejdn", "--ec", "P-256"))
    ok(cli(config, "rotate", "omejdn", "omejdn", "--publish-for", "1s"))
    (due,) = [k["activate_at"] for k in listed(config).values() if k["state"] == "next"]
    time.sleep(9)
    old = signing_jwk(loader)
    tokens = issue_tokens(old, lifetime=4)
    signed = time.monotonic()
    started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    maintained = ok(cli(config, "maintain"))
    assert f"{old['kid']} retired" in maintained.stdout
    assert "destroyed" not in maintained.stdout
    jwks = published_jwks(loader)
    if time.monotonic() - signed < 3.5:  # the tokens are still valid: they must verify
        assert all(verifies(t, jwks) for t in tokens)
    assert old["kid"] in {k["kid"] for k in jwks["keys"]}
    # Retired when the run ran, not when the rotation was due; destroyed 6 s later.
    retired = listed(config)[old["kid"]]
    retired_at = datetime.datetime.fromisoformat(retired["retired_at"])
    destroy_at = datetime.datetime.fromisoformat(retired["destroy_at"])
    assert retired_at >= started > datetime.datetime.fromisoformat(due) + 6 * SECOND
    assert destroy_at - retired_at == 6 * SECOND
    before_destroy = datetime.datetime.now(datetime.UTC) < destroy_at - SECOND
    again = ok(cli(config, "maintain"))
    if before_destroy:
        assert again.stdout == ""
    wait = destroy_at + SECOND - datetime.datetime.now(datetime.UTC)  # listed in whole seconds
    time.sleep(max(0.0, wait.total_seconds()))
    last = ok(cli(config, "maintain")).stdout
    assert f"{old['kid']} destroyed" in again.stdout + last
    assert old["kid"] not in {k["kid"] for k in published_jwks(loader)["keys"]}
    assert all(not verifies(t, published_jwks(loader)) for t in tokens)  # expired by now


# --- activation -------------------------------------------------------------------------


def test_activate_inside_the_publish_window_is_refused_unless_forced(
    database: ConnectionSettings, tmp_path: Path, loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    config = write_config(database, tmp_path / "cli.yml")
    ok(cli(config, "generate", "omejdn", "omejdn"))
    old = signing_jwk(loader)
    ok(cli(config, "rotate", "omejdn", "omejdn", "--alg", "ES256"))
    (new,) = [kid for kid in listed(config) if kid != old["kid"]]
    before = plain_sql.rows("SELECT kid, type, state, activate_at FROM keys ORDER BY kid, type")

    refused = one_error_line(cli(config, "activate", "--", "omejdn", "omejdn", new))
    assert "publish window" in refused
    assert "--force" in refused
    assert plain_sql.rows("SELECT kid, type, state, activate_at FROM keys ORDER BY kid, type") == (
        before
    )

    forced = ok(cli(config, "activate", "--force", "--", "omejdn", "omejdn", new))
    assert "no key for kid" in forced.stderr.lower() or "do not know" in forced.stderr
    signing = signing_jwk(loader)
    assert signing["kid"] == new
    assert {k["kid"]: k["state"] for k in listed(config).values()} == {
        new: "active",
        old["kid"]: "retired",
    }
    # Activating the signer again changes nothing and says so.
    again = ok(cli(config, "activate", "--", "omejdn", "omejdn", new))
    assert "already" in again.stdout


def test_activate_makes_a_key_of_another_family_the_signer(
    plugin_host: Host, loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    first = plugin_host.keys.load("omejdn", "omejdn", create=True)[0]  # RS256
    second = plugin_host.keys.rotate("omejdn", "omejdn", "ES384", publish_for=HOUR, now=NOW)
    plugin_host.keys.activate("omejdn", "omejdn", second.kid, now=NOW + 2 * HOUR)
    jwk = signing_jwk(loader)
    assert (jwk["kid"], jwk["alg"]) == (second.kid, "ES384")
    assert dict(plain_sql.rows("SELECT kid, state FROM keys")) == {
        first.kid: "retired",
        second.kid: "active",
    }
    assert plain_sql.value("SELECT kid FROM keys WHERE type = 'sk'") == second.kid
    # A rollback to the RSA key retires the EC one, dated from the rollback.
    plugin_host.keys.activate("omejdn", "omejdn", first.kid, now=NOW + 3 * HOUR)
    jwk = signing_jwk(loader)
    assert jwk["kid"] == first.kid
    assert plain_sql.rows(
        "SELECT DISTINCT state, retired_at FROM keys WHERE kid = %s", (second.kid,)
    ) == [("retired", NOW + 3 * HOUR)]


def test_two_signers_left_by_earlier_versions_are_repaired_by_maintain(
    plugin_host: Host, loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    # Before the one-signer rule, an ES256 rotation left both keys active.
    first = plugin_host.keys.load("omejdn", "omejdn", create=True)[0]
    second = plugin_host.keys.rotate("omejdn", "omejdn", "ES256", publish_for=HOUR, now=NOW)
    plain_sql.execute(
        "UPDATE keys SET state = 'active', activate_at = %s WHERE kid = %s",
        (NOW + HOUR, second.kid),
    )
    changes = plugin_host.keys.maintain(now=NOW + 2 * HOUR)
    assert [(c.kid, c.change) for c in changes] == [(first.kid, "retired")]
    jwk = signing_jwk(loader)
    assert jwk["kid"] == second.kid
    assert plugin_host.keys.maintain(now=NOW + 2 * HOUR) == []


# --- targets and certificates -----------------------------------------------------------


def test_rotate_activate_retire_refuse_a_target_that_does_not_exist(
    database: ConnectionSettings, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    config = write_config(database, tmp_path / "cli.yml")
    ok(cli(config, "generate", "omejdn", "omejdn"))
    (kid,) = listed(config)
    before = plain_sql.rows("SELECT target_type, target, kid, type FROM keys ORDER BY 1, 2, 3, 4")

    missing = one_error_line(cli(config, "rotate", "omejdn", "nosuch"))
    assert "no key set omejdn/nosuch" in missing
    assert "--create" in missing
    typo = one_error_line(cli(config, "rotate", "omjedn", "omejdn"))
    assert "unknown target type 'omjedn'" in typo
    assert "omejdn, clients" in typo
    for command in ("activate", "retire"):
        assert "no key set omejdn/nosuch" in one_error_line(
            cli(config, command, "--", "omejdn", "nosuch", kid)
        )
        assert "unknown target type" in one_error_line(
            cli(config, command, "--", "omjedn", "omejdn", kid)
        )
    assert "unknown target type" in one_error_line(
        cli(config, "rotate", "omjedn", "omejdn", "--create")
    )
    assert (
        plain_sql.rows("SELECT target_type, target, kid, type FROM keys ORDER BY 1, 2, 3, 4")
        == before
    )

    created = ok(cli(config, "rotate", "omejdn", "fresh", "--create", "--alg", "ES256"))
    assert "is active, signs from" in created.stdout  # the first key of a set signs at once
    assert plain_sql.value("SELECT state FROM keys WHERE target = 'fresh'") == "active"


def test_rotating_a_signer_with_a_chain_gives_the_new_key_one(
    database: ConnectionSettings, tmp_path: Path, plugin_host: Host, loader: PluginLoader
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    config = write_config(database, tmp_path / "cli.yml")
    ok(cli(config, "generate", "omejdn", "omejdn", "--self-signed", "--subject", "id.example"))
    (old,) = listed(config)

    rotated = ok(cli(config, "rotate", "omejdn", "omejdn", "--alg", "ES256"))
    assert "CN=id.example (self-signed)" in rotated.stdout
    keys = listed(config)
    (new,) = [kid for kid in keys if kid != old]
    assert keys[new]["certificates"] == 1
    published = {jwk["kid"]: jwk for jwk in published_jwks(loader)["keys"]}
    assert "x5c" in published[new]
    cert = x509.load_der_x509_certificate(__import__("base64").b64decode(published[new]["x5c"][0]))
    assert cert.subject.rfc4514_string() == "CN=id.example"
    assert cert.public_key() == plugin_host.keys.stored("omejdn", "omejdn").by_kid(new).public_key  # type: ignore[union-attr]
    ok(cli(config, "delete", "--yes", "--", "omejdn", "omejdn", new))

    # --no-cert: explicitly none.
    bare = ok(cli(config, "rotate", "omejdn", "omejdn", "--no-cert"))
    assert "certificate" not in bare.stdout
    (bare_kid,) = [kid for kid in listed(config) if kid != old]
    assert listed(config)[bare_kid]["certificates"] == 0
    ok(cli(config, "delete", "--yes", "--", "omejdn", "omejdn", bare_kid))

    # --key and --cert: the operator's own key and chain.
    from omejdn_pg.certificates import self_signed_certificate

    private = ec.generate_private_key(ec.SECP384R1())
    chain = self_signed_certificate(private, "ca-issued.example", 30)
    key_file, cert_file = tmp_path / "new.key", tmp_path / "new.crt"
    key_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(chain.public_bytes(serialization.Encoding.PEM))
    given = ok(
        cli(config, "rotate", "omejdn", "omejdn", "--key", str(key_file), "--cert", str(cert_file))
    )
    assert "CN=ca-issued.example)" in given.stdout
    assert "ES384" in given.stdout
    usage = cli(config, "rotate", "omejdn", "other", "--cert", str(cert_file))
    assert "--cert needs --key" in one_error_line(usage, code=2)

    # An expired chain is refused, as KEYS_STORE refuses it, and nothing is written.

    past = datetime.datetime.now(datetime.UTC) - 10 * 24 * HOUR
    cert_file.write_bytes(
        self_signed(private, valid_from=past, days=1).public_bytes(serialization.Encoding.PEM)
    )
    ok(cli(config, "delete", "--yes", "--", "omejdn", "omejdn", listed_next(config)))
    before = listed(config)
    expired = cli(
        config, "rotate", "omejdn", "omejdn", "--key", str(key_file), "--cert", str(cert_file)
    )
    assert "expired" in one_error_line(expired)
    assert listed(config) == before


def listed_next(config: Path) -> str:
    (kid,) = [kid for kid, key in listed(config).items() if key["state"] == "next"]
    return kid


def test_retiring_a_next_key_does_not_skip_its_publish_window(plugin_host: Host) -> None:
    # A way around the publish window the state machine looks for: retire the next
    # key, then activate it "as a rollback" while relying parties still lack it.
    plugin_host.keys.load("omejdn", "omejdn", create=True)
    waiting = plugin_host.keys.rotate("omejdn", "omejdn", publish_for=48 * HOUR, now=NOW)
    plugin_host.keys.retire("omejdn", "omejdn", waiting.kid, now=NOW + HOUR)
    with pytest.raises(TooEarly, match="publish window"):
        plugin_host.keys.activate("omejdn", "omejdn", waiting.kid, now=NOW + 2 * HOUR)
    plugin_host.keys.activate("omejdn", "omejdn", waiting.kid, now=NOW + 48 * HOUR)
    assert plugin_host.keys.stored("omejdn", "omejdn")[0].kid == waiting.kid
