"""``omejdn-pg keys``: key sets and their lifecycle — list, generate, import, jwks, rotate,
activate, retire, delete, maintain, rewrap.

Keys travel as JWK Sets through the Host, exactly as Omejdn's core
stores and loads them; the lifecycle (rotate, activate, retire, maintain) and
sealing (rewrap) are kept in PostgreSQL and reached through the Host's
lifecycle calls. The key libraries are imported inside the commands, so
loading this module for ``--help`` costs nothing.

Over 400 lines on purpose: one click group whose commands share the key view,
the writing host and the plaintext guard; split, ``keys --help`` would import
every part of it anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import click

from omejdn_pg.cli.context import Group, current
from omejdn_pg.cli.output import Column, print_document, read_text_source, stream
from omejdn_pg.keys.states import DATES

if TYPE_CHECKING:
    import datetime

    from omejdn_pg.keys.model import Key
    from omejdn_pg.service.host import Host

ALLOW_PLAINTEXT_HELP: Final = (
    "Store the private key unsealed even though the database holds sealed keys "
    "(refused otherwise when no key_encryption is configured)."
)


EC_CURVE_NAMES: Final = ("P-256", "P-384", "P-521")
ALGS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
KEY_FIELDS: Final = (
    "target_type",
    "target",
    "kid",
    "key",
    "alg",
    "use",
    "state",
    "private",
    "certificates",
    "not_after",
    *DATES,
    "problem",
)


@click.group(cls=Group)
def keys() -> None:
    """Key sets and their lifecycle: list, generate, import, jwks, rotate, maintain, ..."""


def _when(moment: datetime.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def key_view(target_type: str, target: str, key: Key) -> dict[str, Any]:
    """One key's fixed set of fields, null when absent; never a private member."""
    family = key.family
    kind = f"RSA {key.public_key.key_size}" if family == "RSA" else family.replace("-", " ", 1)
    return {
        "target_type": target_type,
        "target": target,
        "kid": key.kid,
        "key": kind,
        "alg": key.alg,
        "use": key.use,
        "state": key.state,
        "private": key.is_private,
        "certificates": len(key.certificates),
        "not_after": _when(key.certificates[0].not_valid_after_utc) if key.certificates else None,
        **{name: _when(moment) for name, moment in key.lifecycle.dates().items()},
        "problem": key.certificate_problem(),
    }


def stored_keys(host: Host, target_type: str, target: str) -> list[Key]:
    """The target's keys with their lifecycle (PostgreSQL), else as the files answer."""
    from omejdn_pg.errors import ConfigurationError

    try:
        return list(host.keys.stored(target_type, target))
    except ConfigurationError:
        return list(host.keys.load(target_type, target))


KEY_COLUMNS: Final = (
    Column("type", lambda r: r["target_type"]),
    Column("target", lambda r: r["target"]),
    Column("state", lambda r: r["state"]),
    Column("key", lambda r: r["key"]),
    Column("alg", lambda r: r["alg"]),
    Column("use", lambda r: r["use"]),
    Column("private", lambda r: "yes" if r["private"] else "no"),
    Column("certs", lambda r: r["certificates"]),
    Column("not after", lambda r: (r["not_after"] or "")[:10]),
    Column(
        "next change",
        lambda r: (
            f"active {r['activate_at'][:16]}"
            if r["state"] == "next" and r["activate_at"]
            else f"gone {r['destroy_at'][:16]}"
            if r["state"] == "retired" and r["destroy_at"]
            else ""
        ),
    ),
    Column("kid", lambda r: r["kid"]),
    Column("problem", lambda r: r["problem"] or ""),
)


@keys.command("list")
@click.argument("target_type", required=False)
def keys_list(target_type: str | None) -> None:
    """List every key (optionally of one TARGET_TYPE) with its state and dates.

    Needs no key-encryption key: a sealed private key is listed from its public half.
    """
    from omejdn_pg.postgres.schema import SECRET_KEY
    from omejdn_pg.sealing import row_context

    cli = current()
    cli.public_keys_only = True
    host = cli.host()
    with host.snapshot():
        views = [
            key_view(tt, t, key)
            for tt, t in host.keys.targets(target_type)
            for key in stored_keys(host, tt, t)
        ]
    unopened = host.postgres.keyring.unopened if host.postgres is not None else set()
    for view in views:
        # Its private key is stored, sealed: not opened here, but there.
        if row_context(view["target_type"], view["target"], view["kid"], SECRET_KEY) in unopened:
            view["private"] = True
    count = stream(cli.output_format(), views, KEY_COLUMNS)
    cli.note(f"{count} key(s)")


def _private_key(curve: str | None, rsa_bits: int) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if curve:
        curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
        return ec.generate_private_key(curves[curve])
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


@keys.command("generate")
@click.argument("target_type")
@click.argument("target")
@click.option("--ec", "curve", type=click.Choice(EC_CURVE_NAMES), help="An EC key on CURVE.")
@click.option(
    "--rsa-bits",
    type=click.IntRange(1024, 8192),
    default=2048,
    show_default=True,
    help="At least OMEJDN_PG_MIN_RSA_BITS (2048 unless set), as for every key stored.",
)
@click.option("--self-signed", is_flag=True, help="Add a self-signed certificate.")
@click.option("--subject", metavar="CN", help="Certificate common name (default: TARGET).")
@click.option("--days", type=click.IntRange(1, 36500), default=365, show_default=True)
@click.option("--force", is_flag=True, help="Replace the target's existing key set.")
@click.option("--allow-plaintext", is_flag=True, help=ALLOW_PLAINTEXT_HELP)
def keys_generate(
    target_type: str,
    target: str,
    curve: str | None,
    rsa_bits: int,
    self_signed: bool,
    subject: str | None,
    days: int,
    force: bool,
    allow_plaintext: bool,
) -> None:
    """Make TARGET_TYPE/TARGET hold one new key (RSA 2048 unless --ec), e.g. `omejdn omejdn`.

    To add a key to a set that signs already, use `keys rotate`.
    """
    from omejdn_pg.certificates import self_signed_certificate
    from omejdn_pg.keys.model import Key

    host = writing_keys(allow_plaintext)
    ensure_replaceable(host, target_type, target, force)
    private = _private_key(curve, rsa_bits)
    certs = [self_signed_certificate(private, subject or target, days)] if self_signed else []
    key = Key(private.public_key(), private, certs)
    host.keys.store(target_type, target, [key])
    click.echo(f"generated {target_type}/{target}: kid {key.kid}")


def writing_keys(allow_plaintext: bool) -> Host:
    """The host, its key writes allowed to store plain private keys beside sealed ones
    only with ``--allow-plaintext``."""
    host = current().host()
    if host.postgres is not None:
        host.postgres.allow_plaintext = allow_plaintext
    return host


def ensure_replaceable(host: Host, target_type: str, target: str, force: bool) -> None:
    from omejdn_pg.errors import AlreadyExists

    if not force and host.keys.load(target_type, target):
        raise AlreadyExists(
            f"{target_type}/{target} has keys already (use --force to replace the whole set, "
            "or `keys rotate` to add one)"
        )


@keys.command("import")
@click.argument("target_type")
@click.argument("target")
@click.option("--key", "key_file", metavar="FILE", help="PEM private (or public) key.")
@click.option("--cert", "cert_file", metavar="FILE", help="PEM certificate chain.")
@click.option("--kid", help="The key's kid (default: its RFC 7638 thumbprint).")
@click.option("--alg", type=click.Choice(ALGS), help="The key's alg (default: by key type).")
@click.option("--use", "use", type=click.Choice(("sig", "enc")), help="The key's use.")
@click.option("--force", is_flag=True, help="Replace the target's existing key set.")
@click.option("--allow-plaintext", is_flag=True, help=ALLOW_PLAINTEXT_HELP)
def keys_import(
    target_type: str,
    target: str,
    key_file: str | None,
    cert_file: str | None,
    kid: str | None,
    alg: str | None,
    use: str | None,
    force: bool,
    allow_plaintext: bool,
) -> None:
    """Make a PEM key and/or certificate chain the one key of TARGET_TYPE/TARGET."""
    from omejdn_pg.keys.model import Key

    if key_file is None and cert_file is None:
        raise click.UsageError("give --key FILE, --cert FILE or both")
    key_text, key_name = read_text_source(key_file) if key_file else (None, "")
    cert_text, cert_name = read_text_source(cert_file) if cert_file else (None, "")
    params = {name: value for name, value in (("kid", kid), ("alg", alg), ("use", use)) if value}
    key = Key.from_pem(
        key_text, cert_text, params, what=" and ".join(n for n in (key_name, cert_name) if n)
    )
    host = writing_keys(allow_plaintext)
    ensure_replaceable(host, target_type, target, force)
    host.keys.store(target_type, target, [key])
    click.echo(f"imported {target_type}/{target}: kid {key.kid}")


@keys.command("jwks")
@click.argument("target_type", default="omejdn")
def keys_jwks(target_type: str) -> None:
    """Print the public keys of TARGET_TYPE (default: omejdn) as a JWK Set: what
    /jwks.json publishes — next, active and retired keys, no private member.
    Needs no key-encryption key."""
    cli = current()
    cli.public_keys_only = True
    print_document(cli.host().keys.jwks(target_type), cli.output_format("json"))


def _duration(value: str | None, option: str) -> datetime.timedelta | None:
    from omejdn_pg.settings.checks import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value, option)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@keys.command("rotate")
@click.argument("target_type")
@click.argument("target")
@click.option(
    "--alg", type=click.Choice(ALGS), help="The new key's algorithm (default: the signer's)."
)
@click.option(
    "--publish-for",
    metavar="DURATION",
    help="Publish the new key this long before it signs (e.g. 2d, 36h; default: "
    "the key_lifecycle.publish_for setting, 2 days).",
)
@click.option("--key", "key_file", metavar="FILE", help="The new key (PEM private key).")
@click.option(
    "--cert",
    "cert_file",
    metavar="FILE",
    help="The new key's certificate chain (PEM; with --key). Default: a self-signed "
    "certificate of the signer's subject when the signer has a chain.",
)
@click.option("--no-cert", is_flag=True, help="No certificate, even if the signer has a chain.")
@click.option("--create", is_flag=True, help="Start a new key set if TARGET has none.")
def keys_rotate(
    target_type: str,
    target: str,
    alg: str | None,
    publish_for: str | None,
    key_file: str | None,
    cert_file: str | None,
    no_cert: bool,
    create: bool,
) -> None:
    """Add a `next` key to TARGET_TYPE/TARGET (`omejdn` or `clients`): published now,
    signing once its publish window has passed and `keys maintain` has run."""
    given = _given_key(key_file, cert_file, alg, no_cert)
    cli = current()
    key = cli.host().keys.rotate(
        target_type,
        target,
        alg,
        publish_for=_duration(publish_for, "--publish-for"),
        create=create,
        key=given,
        certificate=False if no_cert else None,
    )
    starts = key.lifecycle.activate_at
    when = starts.isoformat(timespec="seconds") if starts else "now"
    chain = ""
    if key.certificates:
        chain = f", certificate {key.certificates[0].subject.rfc4514_string()}"
        if given is None:
            chain += " (self-signed)"
    click.echo(
        f"{target_type}/{target}: {key.kid} ({key.alg}{chain}) is {key.state}, signs from {when}"
    )


def _given_key(
    key_file: str | None, cert_file: str | None, alg: str | None, no_cert: bool
) -> Key | None:
    from omejdn_pg.keys.model import Key

    if cert_file and not key_file:
        raise click.UsageError("--cert needs --key: the certificate must hold the new key")
    if cert_file and no_cert:
        raise click.UsageError("--cert and --no-cert contradict each other")
    if not key_file:
        return None
    key_text, key_name = read_text_source(key_file)
    cert_text, cert_name = read_text_source(cert_file) if cert_file else (None, "")
    params = {"use": "sig", **({"alg": alg} if alg else {})}
    key = Key.from_pem(
        key_text, cert_text, params, what=" and ".join(n for n in (key_name, cert_name) if n)
    )
    if not key.is_private:
        raise click.BadParameter(f"{key_name} holds no private key: the new key must sign")
    return key


@keys.command("activate")
@click.argument("target_type")
@click.argument("target")
@click.argument("kid")
@click.option("--force", is_flag=True, help="Even a key still in its publish window.")
def keys_activate(target_type: str, target: str, kid: str, force: bool) -> None:
    """Make key KID the signer now; the previous signer retires (whatever its family).
    A key still in its publish window needs --force."""
    import datetime

    from omejdn_pg.lifecycle import JWKS_MAX_AGE, is_signer, signer

    cli = current()
    host = cli.host()
    before = host.keys.stored(target_type, target)
    was = signer(before)
    if was is not None and was.kid == kid and sum(map(is_signer, before)) <= 1:
        click.echo(f"{target_type}/{target}: {kid} is already the signing key")
        return
    moment = datetime.datetime.now(datetime.UTC)
    early = next(
        (
            k
            for k in before
            if k.kid == kid
            and k.state != "active"
            and k.lifecycle.activate_at
            and k.lifecycle.activate_at > moment
        ),
        None,
    )
    host.keys.activate(target_type, target, kid, force=force, now=moment)
    click.echo(f"{target_type}/{target}: {kid} is the signing key")
    if early is not None and early.lifecycle.activate_at is not None:
        created = early.lifecycle.created_at
        since = created.isoformat(timespec="seconds") if created else "?"
        due = early.lifecycle.activate_at.isoformat(timespec="seconds")
        cli.note(
            f"{kid} signs before its publish window ends ({due}): relying parties whose "
            f"JWK Set was fetched before {since} do not know it and reject its tokens "
            f"('no key for kid') until they fetch /jwks.json again (cached up to "
            f"{int(JWKS_MAX_AGE.total_seconds())} s)"
        )


@keys.command("retire")
@click.argument("target_type")
@click.argument("target")
@click.argument("kid")
@click.option("--force", is_flag=True, help="Even the signing key.")
def keys_retire(target_type: str, target: str, kid: str, force: bool) -> None:
    """Stop signing with key KID; it stays published for its retirement window."""
    current().host().keys.retire(target_type, target, kid, force=force)
    click.echo(f"{target_type}/{target}: {kid} is retired")


@keys.command("delete")
@click.argument("target_type")
@click.argument("target")
@click.argument("kid", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Even the signing key of a set with other keys.")
def keys_delete(target_type: str, target: str, kid: str | None, yes: bool, force: bool) -> None:
    """Delete key KID of TARGET_TYPE/TARGET, or (without KID) the target's whole set."""
    from omejdn_pg.cli.prompts import confirm

    what = f"key {kid} of {target_type}/{target}" if kid else f"every key of {target_type}/{target}"
    if not confirm(f"Delete {what}?", yes):
        click.echo("nothing deleted")
        return
    current().host().keys.delete(target_type, target, kid, force=force)
    click.echo(f"deleted {what}")


@keys.command("maintain")
def keys_maintain() -> None:
    """Advance every lifecycle transition that is due: next keys whose publish window
    has passed become active (retiring the keys they replace), retired keys whose window
    has ended are deleted. Idempotent; safe to run from several instances at once."""
    cli = current()
    changes = cli.host().keys.maintain()
    for change in changes:
        click.echo(str(change))
    cli.note(f"{len(changes)} change(s)")


@keys.command("rewrap")
@click.option("--check", is_flag=True, help="Only count what each key-encryption key seals.")
def keys_rewrap(check: bool) -> None:
    """Seal every private key under the first configured key-encryption key (one
    transaction); afterwards the old key-encryption keys can be removed."""
    cli = current()
    host = cli.host()
    counts = host.keys.sealing_report() if check else host.keys.rewrap()
    fmt = cli.output_format()
    if fmt != "table":
        print_document(counts, fmt)
        return
    verb = "seals" if check else "re-sealed from"
    for origin, count in counts.items():
        click.echo(f"{origin}: {count} private key(s)" if check else f"{verb} {origin}: {count}")
    if not counts:
        cli.note("no private key is sealed or to be sealed" if check else "nothing to re-seal")
