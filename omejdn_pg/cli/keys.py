"""``omejdn-pg keys``: keys and certificates — list, generate, import, jwks.

Moved from the former single-module CLI with its behaviour unchanged; key
material is read and stored through the host facade's ``keys``. The key
libraries are imported inside the commands, so loading this module for
``--help`` costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import click

from omejdn_pg.cli.context import Group, current
from omejdn_pg.cli.output import print_document, print_table, read_text_source, stream

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from omejdn_pg.entities import KeyMaterial
    from omejdn_pg.host.facade import Host

EC_CURVE_NAMES: Final = ("P-256", "P-384", "P-521")


def ec_curves() -> dict[str, ec.EllipticCurve]:
    from cryptography.hazmat.primitives.asymmetric import ec

    return {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


@click.group(cls=Group)
def keys() -> None:
    """Keys and certificates: list, generate, import, jwks."""


def key_view(target_type: str, target: str, material: KeyMaterial) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from omejdn_pg.cli.certificates import certificate_view

    pk = material.pk
    if isinstance(pk, rsa.RSAPublicKey):
        kind = f"RSA {pk.key_size}"
    elif isinstance(pk, ec.EllipticCurvePublicKey):
        names = {curve.name: label for label, curve in ec_curves().items()}
        kind = f"EC {names.get(pk.curve.name, pk.curve.name)}"
    else:
        kind = None
    view: dict[str, Any] = {
        "target_type": target_type,
        "target": target,
        "kid": material.kid,
        "key": kind,
        "private": material.sk is not None,
        "certificates": len(material.certs),
    }
    if material.certs:
        view["certificate"] = certificate_view(material.certs[0])
    return view


@keys.command("list")
@click.argument("target_type", required=False)
def keys_list(target_type: str | None) -> None:
    """List key targets (optionally of one TARGET_TYPE, e.g. omejdn or clients)."""
    cli = current()
    host = cli.host()
    with host.snapshot():
        views = [key_view(tt, t, host.keys.load(tt, t)) for tt, t in host.keys.targets(target_type)]
    fmt = cli.output_format()
    if fmt != "table":
        stream(fmt, views, [])
        return
    print_table(
        ["type", "target", "key", "private", "certs", "not after", "kid"],
        [
            (
                v["target_type"],
                v["target"],
                v["key"] or "",
                "yes" if v["private"] else "no",
                v["certificates"],
                v.get("certificate", {}).get("not_after", "")[:10],
                v["kid"],
            )
            for v in views
        ],
    )
    cli.note(f"{len(views)} key target(s)")


@keys.command("generate")
@click.argument("target_type")
@click.argument("target")
@click.option("--ec", "curve", type=click.Choice(EC_CURVE_NAMES), help="An EC key on CURVE.")
@click.option("--rsa-bits", type=click.IntRange(2048, 8192), default=2048, show_default=True)
@click.option("--self-signed", is_flag=True, help="Add a self-signed certificate.")
@click.option("--subject", metavar="CN", help="Certificate common name (default: TARGET).")
@click.option("--days", type=click.IntRange(1, 36500), default=365, show_default=True)
@click.option("--force", is_flag=True, help="Replace existing key material of the target.")
def keys_generate(
    target_type: str,
    target: str,
    curve: str | None,
    rsa_bits: int,
    self_signed: bool,
    subject: str | None,
    days: int,
    force: bool,
) -> None:
    """Generate a key for TARGET_TYPE/TARGET (RSA 2048 unless --ec), e.g. `omejdn omejdn`."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from omejdn_pg.cli.certificates import self_signed_certificate
    from omejdn_pg.entities import KeyMaterial

    host = current().host()
    ensure_replaceable(host, target_type, target, force)
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if curve:
        key = ec.generate_private_key(ec_curves()[curve])
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    certs = [self_signed_certificate(key, subject or target, days)] if self_signed else []
    material = KeyMaterial(sk=key, certs=certs)
    host.keys.store(target_type, target, material)
    click.echo(f"generated {target_type}/{target}: kid {material.kid}")


def ensure_replaceable(host: Host, target_type: str, target: str, force: bool) -> None:
    from omejdn_pg.errors import AlreadyExists

    if not force and not host.keys.load(target_type, target).is_empty:
        raise AlreadyExists(
            f"{target_type}/{target} has key material already (use --force to replace it)"
        )


@keys.command("import")
@click.argument("target_type")
@click.argument("target")
@click.option("--key", "key_file", metavar="FILE", help="PEM private (or public) key.")
@click.option("--cert", "cert_file", metavar="FILE", help="PEM certificate chain.")
@click.option("--force", is_flag=True, help="Replace existing key material of the target.")
def keys_import(
    target_type: str, target: str, key_file: str | None, cert_file: str | None, force: bool
) -> None:
    """Store a PEM key and/or certificate chain for TARGET_TYPE/TARGET."""
    from omejdn_pg.entities import KeyMaterial
    from omejdn_pg.errors import InvalidValue

    if key_file is None and cert_file is None:
        raise click.UsageError("give --key FILE, --cert FILE or both")
    key_text, key_name = read_text_source(key_file) if key_file else (None, "")
    cert_text, cert_name = read_text_source(cert_file) if cert_file else (None, "")
    material = KeyMaterial.from_pem(
        key_text, cert_text, what=" and ".join(n for n in (key_name, cert_name) if n)
    )
    if material.is_empty:
        raise InvalidValue("the files hold no key and no certificate")
    host = current().host()
    ensure_replaceable(host, target_type, target, force)
    host.keys.store(target_type, target, material)
    click.echo(f"imported {target_type}/{target}: kid {material.kid}")


@keys.command("jwks")
@click.argument("target_type", default="omejdn")
def keys_jwks(target_type: str) -> None:
    """Print the public keys of TARGET_TYPE (default: omejdn) as a JWK Set."""
    cli = current()
    print_document(cli.host().keys.jwks(target_type), cli.output_format("json"))
