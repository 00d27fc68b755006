"""``omejdn-pg clients``: list, show, add, update, set-attr, rotate-secret, delete, set-cert.

Edits are read-modify-write through the Host, so a client's metadata
that a command does not name is saved as it was. ``client_secret`` is masked
in every view unless ``--show-secrets``; a generated or rotated secret is
printed once, on stdout, and logged nowhere. ``update -f`` takes a client as
``show`` prints it: a masked secret in it keeps the stored one, and the
certificate summary ``show`` adds is not metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import click

from omejdn_pg.cli.context import Group, current
from omejdn_pg.cli.lists import criteria_from, listing_options, show_listing
from omejdn_pg.cli.output import (
    MASK,
    Column,
    Failure,
    parse_document,
    parse_scalar,
    print_document,
    read_text_source,
    split_assignment,
    words,
)
from omejdn_pg.cli.prompts import read_password
from omejdn_pg.cli.records import add_delete_and_set_attr, attribute_text, find
from omejdn_pg.client_metadata import AUTH_METHODS

if TYPE_CHECKING:
    from omejdn_pg.entities import Client

SECRET: Final = "client_secret"  # noqa: S105 - the field's name
CERTIFICATE_VIEW: Final = "certificate"
"""The key ``clients show`` adds for the certificate's summary; never stored as metadata."""
CLIENT_FIELDS: Final = (
    "client_id",
    "backend",
    "client_name",
    "token_endpoint_auth_method",
    "grant_types",
    "redirect_uris",
    "scope",
    "client_secret",
    "attributes",
)
"""Every field of a client in ``clients list -o json|yaml``, null when absent."""

show_secrets_option = click.option(
    "--show-secrets",
    "--show-secret",
    "show_secrets",
    is_flag=True,
    help="Print client_secret instead of masking it.",
)


@click.group(cls=Group)
def clients() -> None:
    """OAuth clients: list, show, add, update, set-attr, rotate-secret, delete, set-cert."""


def client_view(client: Client, show_secret: bool = False) -> dict[str, Any]:
    view = client.to_dict()
    if view.get(SECRET) is not None and not show_secret:
        view[SECRET] = MASK
    return view


def client_record(client: Client, show_secret: bool) -> dict[str, Any]:
    """A client as ``clients list`` prints it: :data:`CLIENT_FIELDS`."""
    metadata = client.metadata
    record: dict[str, Any] = {name: metadata.get(name) for name in CLIENT_FIELDS}
    record["backend"] = client.backend
    if record[SECRET] is not None and not show_secret:
        record[SECRET] = MASK
    record["attributes"] = dict(client.attributes)
    return record


def client_columns(values: bool) -> list[Column]:
    columns = [
        Column("client_id", lambda r: r["client_id"]),
        Column("name", lambda r: r["client_name"]),
        Column("auth method", lambda r: r["token_endpoint_auth_method"]),
        Column("grant types", lambda r: words(r["grant_types"])),
        Column("scope", lambda r: words(r["scope"])),
    ]
    if values:
        columns.append(Column("attributes", lambda r: attribute_text(r["attributes"], True)))
    return columns


@clients.command("list")
@listing_options("clients", "Only clients whose metadata field or attribute KEY is VALUE.")
@show_secrets_option
def clients_list(
    filters: tuple[str, ...],
    search: str | None,
    limit: int | None,
    offset: int,
    show_secrets: bool,
) -> None:
    """List clients, by client_id, as they are read (client secrets masked; -v: attributes)."""
    from omejdn_pg.service import listing

    cli = current()
    criteria = criteria_from(filters, search, limit, offset)
    show_listing(
        cli,
        listing.client_source(),
        criteria,
        lambda client: client_record(client, show_secrets),
        client_columns(cli.verbose > 0),
    )


@clients.command("show")
@click.argument("client_id")
@show_secrets_option
def clients_show(client_id: str, show_secrets: bool) -> None:
    """Show one client's metadata, attributes and certificate."""
    from omejdn_pg.certificates import certificate_view

    cli = current()
    host = cli.host()
    client: Client = find(host.clients, "client", client_id)
    view = client_view(client, show_secrets)
    cert = host.clients.certificate(client)
    if cert is not None:
        view[CERTIFICATE_VIEW] = certificate_view(cert)
    print_document(view, cli.output_format())


@clients.command("add")
@click.argument("client_id", required=False)
@click.option(
    "--file",
    "-f",
    "source",
    metavar="FILE",
    help="RFC 7591 metadata (YAML or JSON mapping, '-' for stdin), attributes included.",
)
@click.option("--name", "client_name", help="client_name.")
@click.option(
    "--auth-method",
    type=click.Choice(AUTH_METHODS),
    help="token_endpoint_auth_method (default: none, a public client).",
)
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Repeatable.")
@click.option("--grant-type", "grant_types", multiple=True, help="Repeatable.")
@click.option("--scope", "scopes", multiple=True, help="Repeatable.")
@click.option("--attribute", "-a", "attributes", multiple=True, metavar="KEY=VALUE")
def clients_add(
    client_id: str | None,
    source: str | None,
    client_name: str | None,
    auth_method: str | None,
    redirect_uris: tuple[str, ...],
    grant_types: tuple[str, ...],
    scopes: tuple[str, ...],
    attributes: tuple[str, ...],
) -> None:
    """Register a client, from a metadata file or from options.

    A client_secret_* client without a client_secret gets a generated one, printed once.
    """
    from omejdn_pg.errors import AlreadyExists

    metadata = read_mapping(source) if source is not None else {}
    options = {
        "client_id": client_id or None,
        "client_name": client_name,
        "token_endpoint_auth_method": auth_method,
        "redirect_uris": list(redirect_uris) or None,
        "grant_types": list(grant_types) or None,
        "scope": list(scopes) or None,
    }
    metadata.update({k: v for k, v in options.items() if v is not None})
    generated = complete_new_client(metadata)
    client = new_client(metadata, dict(split_assignment(a) for a in attributes))
    cli = current()
    host = cli.host()
    if host.clients.find(client.client_id) is not None:
        raise AlreadyExists(f"client {client.client_id!r} exists already")
    host.clients.add(client)
    print_added(cli.output_format(), client.client_id, generated)


def print_added(fmt: str, client_id: str, generated: str | None) -> None:
    """What ``clients add`` says; a generated secret is shown here and never again."""
    if fmt != "table":
        print_document({"client_id": client_id, SECRET: generated}, fmt)
        return
    click.echo(f"added client {client_id}")
    if generated is not None:
        click.echo(f"client_secret: {generated}")


def complete_new_client(metadata: dict[str, Any]) -> str | None:
    """Defaults of a new client (a public authorization-code client); a generated
    client_secret if it authenticates with one and has none, else None."""
    if not metadata.get("client_id"):
        raise click.UsageError("give CLIENT_ID or a --file with client_id")
    metadata.setdefault("token_endpoint_auth_method", "none")
    metadata.setdefault("grant_types", ["authorization_code"])
    if uses_secret(metadata) and not metadata.get(SECRET):
        secret: str = new_secret()
        metadata[SECRET] = secret
        return secret
    return None


def read_mapping(source: str) -> dict[str, Any]:
    text, name = read_text_source(source)
    document = parse_document(text, name)
    if not isinstance(document, dict):
        raise Failure(f"{name}: expected a mapping of client metadata")
    return document


def new_client(metadata: dict[str, Any], attributes: Mapping[str, Any]) -> Client:
    """A client of ``metadata`` (``attributes`` in it included) plus ``attributes``, checked."""
    from omejdn_pg.entities import Client

    check_auth_method(metadata)
    client = Client.from_dict(metadata)
    client.attributes.update(attributes)
    client.backend = None
    return client


def check_auth_method(metadata: Mapping[str, Any]) -> None:
    from omejdn_pg.errors import InvalidValue

    method = metadata.get("token_endpoint_auth_method")
    if method is not None and method not in AUTH_METHODS:
        raise InvalidValue(
            f"token_endpoint_auth_method {method!r} is not one of {', '.join(AUTH_METHODS)}"
        )


def uses_secret(metadata: Mapping[str, Any]) -> bool:
    """Whether the client authenticates with a client_secret (RFC 7591's default does)."""
    method = metadata.get("token_endpoint_auth_method", "client_secret_basic")
    return str(method).startswith("client_secret_")


def new_secret() -> str:
    import secrets

    return secrets.token_urlsafe(32)


@clients.command("update")
@click.argument("client_id")
@click.option(
    "--file",
    "-f",
    "source",
    metavar="FILE",
    help="The whole client (metadata and attributes, YAML or JSON, '-' for stdin), as "
    "`clients show` prints it; what it leaves out is removed.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a metadata field; VALUE is JSON or YAML ([a, b], 42, true), else text.",
)
@click.option("--unset", "unsets", multiple=True, metavar="KEY", help="Remove a metadata field.")
@click.option(
    "--secret-stdin",
    is_flag=True,
    help="Set client_secret to one line read from stdin: a secret given as --set "
    "client_secret=... is visible to every user of the machine in `ps`.",
)
def clients_update(
    client_id: str,
    source: str | None,
    sets: tuple[str, ...],
    unsets: tuple[str, ...],
    secret_stdin: bool,
) -> None:
    """Change a client's metadata; every field not named stays as it is.

    Give a new client_secret with --secret-stdin (or a hidden prompt on a
    terminal), not on the command line, where `ps` shows it.
    """
    if source is not None and (sets or unsets or secret_stdin):
        raise click.UsageError("give -f FILE or --set/--unset/--secret-stdin, not both")
    if source is None and not (sets or unsets or secret_stdin):
        raise click.UsageError(
            "nothing to update: give -f FILE, --set KEY=VALUE, --unset KEY or --secret-stdin"
        )
    replacement = read_mapping(source) if source is not None else None
    edits = {key: parse_scalar(value) for key, value in map(split_assignment, sets)}
    if secret_stdin:
        if SECRET in edits:
            raise click.UsageError(f"give --secret-stdin or --set {SECRET}=..., not both")
        edits[SECRET] = read_password(True, "Client secret")
    elif SECRET in edits:
        current().note(
            f"warning: a {SECRET} on the command line is visible in `ps` and the shell's "
            "history; use --secret-stdin"
        )
    host = current().host()
    with host.batch():
        client: Client = find(host.clients, "client", client_id)
        before = client.to_dict()
        if replacement is not None:
            replace_client(client, replacement, source or "")
        else:
            edit_metadata(client, edits, unsets)
        if client.to_dict() == before:
            click.echo(f"client {client_id} unchanged")
            return
        host.clients.save(client)
    click.echo(f"updated client {client_id}")


def replace_client(client: Client, document: Mapping[str, Any], name: str) -> None:
    """Make ``document`` the whole of ``client``, keeping a secret it only shows masked."""
    from omejdn_pg.entities import Client

    data = dict(document)
    if data.setdefault("client_id", client.client_id) != client.client_id:
        raise Failure(f"{name} is client {data['client_id']!r}, not {client.client_id!r}")
    if isinstance(data.get(CERTIFICATE_VIEW), Mapping) and "sha256" in data[CERTIFICATE_VIEW]:
        del data[CERTIFICATE_VIEW]
    if data.get(SECRET) == MASK:
        data[SECRET] = client.metadata.get(SECRET)
    check_auth_method(data)
    parsed = Client.from_dict(data)
    client.metadata, client.attributes = parsed.metadata, parsed.attributes


def edit_metadata(client: Client, edits: Mapping[str, Any], unsets: tuple[str, ...]) -> None:
    from omejdn_pg.errors import NotFound

    for key in [*edits, *unsets]:
        if key in ("client_id", "attributes"):
            hint = "; use clients set-attr" if key == "attributes" else ""
            raise click.BadParameter(f"{key} cannot be set or unset here{hint}")
    missing = [key for key in unsets if key not in client.metadata]
    if missing:
        raise NotFound(
            f"client {client.client_id!r} has no metadata field {', '.join(map(repr, missing))}"
        )
    for key in unsets:
        del client.metadata[key]
    client.metadata.update(edits)
    check_auth_method(client.metadata)


@clients.command("rotate-secret")
@click.argument("client_id")
def clients_rotate_secret(client_id: str) -> None:
    """Give a client a new client_secret and print it, once (stdout; -o json: with client_id).

    The old secret stops working at once; the client must be given the new one.
    """
    cli = current()
    host = cli.host()
    with host.batch():
        client: Client = find(host.clients, "client", client_id)
        if not uses_secret(client.metadata) and not client.metadata.get(SECRET):
            method = client.metadata.get("token_endpoint_auth_method")
            raise Failure(
                f"client {client_id!r} does not authenticate with a client_secret "
                f"(token_endpoint_auth_method: {method})"
            )
        secret = client.metadata[SECRET] = new_secret()
        host.clients.save(client)
    fmt = cli.output_format()
    if fmt == "table":
        click.echo(secret)
    else:
        print_document({"client_id": client_id, SECRET: secret}, fmt)
    cli.note(f"rotated the client_secret of {client_id}; it is not shown again")


add_delete_and_set_attr(
    clients,
    "client",
    "CLIENT_ID",
    lambda host: host.clients,
    "Delete clients, their attributes and certificates, after one confirmation.",
)


@clients.command("set-cert")
@click.argument("client_id")
@click.argument("certificate", required=False, metavar="[CERT_FILE]")
@click.option("--remove", is_flag=True, help="Remove the client's certificate instead.")
def clients_set_cert(client_id: str, certificate: str | None, remove: bool) -> None:
    """Set a client's authentication certificate from a PEM file ('-' for stdin), or --remove it."""
    from omejdn_pg.entities import KeyMaterial
    from omejdn_pg.errors import InvalidValue

    if remove == (certificate is not None):
        raise click.UsageError("give either CERT_FILE or --remove")
    host = current().host()
    client: Client = find(host.clients, "client", client_id)
    if certificate is None:
        host.clients.set_certificate(client, None)
        click.echo(f"removed the certificate of {client_id}")
        return
    text, name = read_text_source(certificate)
    chain = KeyMaterial.from_pem(None, text, what=name).certs
    if not chain:
        raise InvalidValue(f"{name}: no certificate found")
    host.clients.set_certificate(client, chain[0])
    click.echo(f"set the certificate of {client_id}: {chain[0].subject.rfc4514_string()}")
