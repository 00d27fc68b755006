"""``omejdn-pg users``: list, show, add, update, passwd, set-attr, delete, consent.

Everything goes through the Host — the same storage events as the
server — except the listing's PostgreSQL part, which is streamed by one
statement (:mod:`omejdn_pg.cli.lists`). A password is never taken from an
argument and never shown, nor is its hash: views say ``has_password``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import click

from omejdn_pg.cli.context import Group, current
from omejdn_pg.cli.lists import criteria_from, listing_options, show_listing
from omejdn_pg.cli.output import (
    Column,
    parse_json,
    parse_scalar,
    print_document,
    split_assignment,
    stream,
)
from omejdn_pg.cli.prompts import read_password
from omejdn_pg.cli.records import add_delete_and_set_attr, attribute_text, find

if TYPE_CHECKING:
    from omejdn_pg.entities import User

USER_FIELDS: Final = ("username", "backend", "extern", "has_password", "attributes", "consent")
"""Every field of a user in ``users list -o json|yaml``, null when absent."""


@click.group(cls=Group)
def users() -> None:
    """Users: list, show, add, update, passwd, set-attr, delete, consent."""


def user_view(user: User) -> dict[str, Any]:
    """The user's YAML form, with whether it has a password in place of the hash, and
    ``backend`` and ``extern`` always there, as ``users list`` has them."""
    fields = user.to_dict()
    del fields["username"]
    fields.pop("password", None)
    return {
        "username": user.username,
        "backend": user.backend,
        "extern": user.extern,
        "has_password": user.password is not None,
        **fields,
    }


def user_record(user: User) -> dict[str, Any]:
    """A user as ``users list`` prints it: :data:`USER_FIELDS`, never the hash."""
    return {
        "username": user.username,
        "backend": user.backend,
        "extern": user.extern,
        "has_password": user.password is not None,
        "attributes": dict(user.attributes),
        "consent": dict(user.consent),
    }


def user_columns(values: bool) -> list[Column]:
    return [
        Column("username", lambda r: r["username"]),
        Column("password", lambda r: "set" if r["has_password"] else "-"),
        Column("extern", lambda r: r["extern"]),
        Column("attributes", lambda r: attribute_text(r["attributes"], values)),
    ]


@users.command("list")
@listing_options("users", "Only users whose attribute KEY is VALUE.")
def users_list(
    filters: tuple[str, ...], search: str | None, limit: int | None, offset: int
) -> None:
    """List users, by username, as they are read (-v: attribute values too).

    The table's count ("3 of 20000 users") goes to stderr.
    """
    from omejdn_pg.service import listing

    cli = current()
    criteria = criteria_from(filters, search, limit, offset)
    show_listing(cli, listing.user_source(), criteria, user_record, user_columns(cli.verbose > 0))


@users.command("show")
@click.argument("username")
def users_show(username: str) -> None:
    """Show one user (never the password hash)."""
    cli = current()
    print_document(user_view(find(cli.host().users, "user", username)), cli.output_format())


@users.command("add")
@click.argument("username")
@click.option(
    "--attribute",
    "-a",
    "attributes",
    multiple=True,
    metavar="KEY=VALUE",
    help="An attribute with a string value; repeatable.",
)
@click.option(
    "--attribute-json",
    "json_attributes",
    multiple=True,
    metavar="KEY=JSON",
    help="An attribute with a JSON value (true, 42, {...}); repeatable.",
)
@click.option("--extern", metavar="PROVIDER", help="An external user (e.g. ldap): no password.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (one line).")
def users_add(
    username: str,
    attributes: tuple[str, ...],
    json_attributes: tuple[str, ...],
    extern: str | None,
    password_stdin: bool,
) -> None:
    """Add a user; the password is prompted for (hidden, twice) or read from stdin."""
    from omejdn_pg.entities import User
    from omejdn_pg.errors import AlreadyExists

    values: dict[str, Any] = dict(split_assignment(a) for a in attributes)
    values.update(json_assignment(a) for a in json_attributes)
    host = current().host()
    if host.users.find(username) is not None:
        raise AlreadyExists(f"user {username!r} exists already")
    password = None if extern else read_password(password_stdin)
    user = User(username=username, attributes=values, extern=extern)
    with host.batch():
        host.users.add(user)
        if password is not None:
            host.users.update_password(user, password)
    click.echo(f"added user {username}")


def json_assignment(text: str) -> tuple[str, Any]:
    """``KEY=JSON`` as ``(KEY, value)``; a usage error if it is not JSON."""
    key, value = split_assignment(text)
    return key, parse_json(value)


@users.command("update")
@click.argument("username")
@click.option(
    "--set-attr",
    "set_attrs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set an attribute; VALUE is JSON or a YAML scalar (true, 42, [a, b]), else text.",
)
@click.option("--unset-attr", "unset_attrs", multiple=True, metavar="KEY", help="Remove one.")
@click.option("--extern", metavar="ISSUER", help="Make the user external (vouched for by ISSUER).")
@click.option("--no-extern", is_flag=True, help="Make the user local again.")
def users_update(
    username: str,
    set_attrs: tuple[str, ...],
    unset_attrs: tuple[str, ...],
    extern: str | None,
    no_extern: bool,
) -> None:
    """Change a user's attributes or extern; everything else stays as it is."""
    if extern is not None and no_extern:
        raise click.UsageError("give --extern ISSUER or --no-extern, not both")
    if not (set_attrs or unset_attrs or extern is not None or no_extern):
        raise click.UsageError("nothing to update: give --set-attr, --unset-attr or --extern")
    edits = {key: parse_scalar(value) for key, value in map(split_assignment, set_attrs)}
    host = current().host()
    with host.batch():
        user: User = find(host.users, "user", username)
        before = user.to_dict()
        apply_user_edits(user, edits, unset_attrs, None if no_extern else extern, no_extern)
        if user.to_dict() == before:
            click.echo(f"user {username} unchanged")
            return
        host.users.save(user)
    click.echo(f"updated user {username}")


def apply_user_edits(
    user: User,
    edits: Mapping[str, Any],
    unset: tuple[str, ...],
    extern: str | None,
    no_extern: bool,
) -> None:
    from omejdn_pg.errors import NotFound

    missing = [key for key in unset if key not in user.attributes]
    if missing:
        raise NotFound(f"user {user.username!r} has no attribute {', '.join(map(repr, missing))}")
    for key in unset:
        del user.attributes[key]
    user.attributes.update(edits)
    if extern is not None:
        user.extern = extern
    if no_extern:
        user.extern = None


@users.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (one line).")
@click.option("--force", is_flag=True, help="Also for an external user (who then has both).")
def users_passwd(username: str, password_stdin: bool, force: bool) -> None:
    """Set a user's password; prompted for (hidden, twice) or read from stdin."""
    from omejdn_pg.cli.output import Failure

    host = current().host()
    user: User = find(host.users, "user", username)
    if user.extern and not force:
        raise Failure(
            f"{username} is an external user (vouched for by {user.extern!r}); "
            "a local password would let them in without the provider: use --force to set one"
        )
    password = read_password(password_stdin, "New password")
    host.users.update_password(user, password)
    click.echo(f"password of {username} changed")


@users.command("hash-report")
def users_hash_report() -> None:
    """Count stored password hashes by scheme and cost (never showing one), and how many
    the next successful login upgrades under the configured password policy."""
    cli = current()
    host = cli.host()
    policy = host.postgres.policy if host.postgres is not None else None
    report = host.users.hash_report(policy)
    fmt = cli.output_format()
    document = {
        "kinds": report.kinds,
        "total": report.total,
        "upgraded_at_next_login": report.upgrading,
        "refused_too_costly": report.refused,
    }
    if fmt != "table":
        print_document(document, fmt)
        return
    for kind, count in report.kinds.items():
        click.echo(f"{kind}: {count}")
    share = f"{100 * report.upgrading / report.total:.0f}%" if report.total else "0%"
    click.echo(f"{report.upgrading} of {report.total} ({share}) upgraded at their next login")
    if report.refused:
        from omejdn_pg.passwords import (
            MAX_ARGON2_MEMORY_KIB,
            MAX_ARGON2_PARALLELISM,
            MAX_ARGON2_TIME,
            MAX_BCRYPT_COST,
        )

        click.echo(
            f"{report.refused} above the cost limits (bcrypt cost {MAX_BCRYPT_COST}; argon2 "
            f"m={MAX_ARGON2_MEMORY_KIB} t={MAX_ARGON2_TIME} p={MAX_ARGON2_PARALLELISM}): "
            "their logins always fail"
        )


add_delete_and_set_attr(
    users,
    "user",
    "USERNAME",
    lambda host: host.users,
    "Delete users and their attributes, after one confirmation for all of them.",
)


# --- consent ---------------------------------------------------------------------------


@users.group("consent", cls=Group)
def consent() -> None:
    """The scopes a user has consented to, per client: list, revoke."""


@consent.command("list")
@click.argument("username")
def consent_list(username: str) -> None:
    """List the clients USERNAME has consented to, with the scopes."""
    cli = current()
    user: User = find(cli.host().users, "user", username)
    rows = [{"client_id": c, "scopes": s} for c, s in sorted(user.consent.items())]
    columns = [Column("client_id", lambda r: r["client_id"]), Column("scopes", scopes_text)]
    shown = stream(cli.output_format(), rows, columns)
    if cli.output_format() == "table":
        cli.note(f"{shown} consent(s) of {username}")


def scopes_text(row: Mapping[str, Any]) -> str:
    scopes = row["scopes"]
    if isinstance(scopes, list):
        return " ".join(str(s) for s in scopes)
    return scopes if isinstance(scopes, str) else str(scopes)


@consent.command("revoke")
@click.argument("username")
@click.argument("client_id", required=False)
@click.option("--all", "revoke_all", is_flag=True, help="Revoke every consent of the user.")
def consent_revoke(username: str, client_id: str | None, revoke_all: bool) -> None:
    """Revoke USERNAME's consent for CLIENT_ID (or --all); the user consents again at login."""
    from omejdn_pg.errors import NotFound

    if revoke_all == (client_id is not None):
        raise click.UsageError("give either CLIENT_ID or --all")
    host = current().host()
    with host.batch():
        user: User = find(host.users, "user", username)
        revoked = sorted(user.consent) if revoke_all else [str(client_id)]
        if client_id is not None and client_id not in user.consent:
            raise NotFound(f"user {username!r} has no consent for client {client_id!r}")
        if not revoked:
            click.echo(f"user {username} has no consent to revoke")
            return
        for name in revoked:
            del user.consent[name]
        host.users.save(user)
    click.echo(f"revoked the consent of {username} for {', '.join(revoked)}")
