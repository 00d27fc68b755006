"""``omejdn-pg``: the operator's command line.

Every command that touches data goes through the host facade, i.e. through
Omejdn's storage events, exactly as the server's own writes do; nothing here
writes SQL except ``check``, which only counts rows.

Where the database is, in order: ``--url``, ``$OMEJDN_PG_URL``, the
``postgres_backend`` section of the plugin files (``--config``, default
``$OMEJDN_PLUGINS``), and otherwise the embedded PostgreSQL under
``./.omejdn-pg/pgdata`` (``$OMEJDN_PG_DATA``), started and migrated on demand.

Errors are one line on stderr, ``error: ...``, and exit status 1 (2 for a
usage error); a password never appears in one. ``OMEJDN_PG_DEBUG=1`` adds
the traceback of an unexpected error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import click
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from omejdn_pg.cli import embedded
from omejdn_pg.cli.certificates import self_signed_certificate
from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.errors import (
    AlreadyExists,
    InvalidValue,
    NotFound,
    OmejdnPgError,
    SchemaOutOfDate,
)
from omejdn_pg.postgres.database import Database
from omejdn_pg.settings import (
    HANDLER_GROUPS,
    MASK,
    PLUGIN_NAME,
    PLUGINS_ENV,
    BackendSettings,
    ConnectionSettings,
    StaticConfiguration,
)

T = TypeVar("T")

URL_ENV: Final = "OMEJDN_PG_URL"
DEBUG_ENV: Final = "OMEJDN_PG_DEBUG"
PROG: Final = "omejdn-pg"
AUTH_METHODS: Final = (
    "none",
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
)
EC_CURVES: Final[dict[str, ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


class Failure(click.ClickException):
    """A failure the operator can act on: one line, exit status 1."""

    exit_code = 1


# --- where the database is -----------------------------------------------------------


@dataclasses.dataclass
class Target:
    settings: BackendSettings
    source: str
    embedded: embedded.EmbeddedStatus | None = None


class Session:
    """What the global options resolve to, built lazily and closed with the command."""

    def __init__(self) -> None:
        self.config_files: list[str] = []
        self.url: str | None = None
        self.quiet = False
        self._target: Target | None = None
        self._host: Any = None
        self._migrated = False

    def configure(self, config_files: Sequence[str], url: str | None, quiet: bool) -> None:
        self.config_files = [p for value in config_files for p in value.split(":") if p]
        self.url = url
        self.quiet = quiet

    def secrets(self) -> list[str]:
        """Passwords that must not appear in any message."""
        found = []
        if self._target is not None and self._target.settings.connection.password:
            found.append(self._target.settings.connection.password)
        for url in (self.url, os.environ.get(URL_ENV)):
            if url:
                try:
                    password = ConnectionSettings.from_url(url).params.get("password")
                except OmejdnPgError:
                    password = None
                if password:
                    found.append(password)
        return found

    def note(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"{PROG}: {message}", err=True)

    def static(self) -> StaticConfiguration:
        if self.config_files:
            return StaticConfiguration.from_files(self.config_files)
        return StaticConfiguration.from_env()

    def target(self) -> Target:
        """Where the database is; starts the embedded server if that is where."""
        if self._target is None:
            self._target = self._resolve()
        return self._target

    def _resolve(self) -> Target:
        static = self.static()
        section_present = static.plugins.get(PLUGIN_NAME) is not None
        base = static.backend_settings()
        base = dataclasses.replace(base, handlers=frozenset(HANDLER_GROUPS))
        url, source = self.url, "--url"
        if not url and os.environ.get(URL_ENV):
            url, source = os.environ[URL_ENV], f"${URL_ENV}"
        if url:
            connection = ConnectionSettings.from_url(url)
            return Target(dataclasses.replace(base, connection=connection), source)
        if section_present:
            return Target(base, static.source)
        path = embedded.data_dir()
        status, started = embedded.start(path)
        connection = status.connection()
        where = f"{path} ({embedded.url(connection)})"
        self.note(("started" if started else "using") + f" the embedded PostgreSQL in {where}")
        return Target(
            dataclasses.replace(base, connection=connection, source=f"embedded {path}"),
            f"embedded PostgreSQL in {path}",
            status,
        )

    def connection(self) -> ConnectionSettings:
        return self.target().settings.connection

    def first_contact(self, operation: Callable[[], T]) -> T:
        """Run the command's first database operation.

        On a reused embedded server the ``omejdn`` database was not checked (a
        reuse opens no connection); if it is missing, it is created here and
        ``operation`` runs again.
        """
        status = self.target().embedded
        if status is None:
            return operation()
        return embedded.with_database(status, operation)

    def ensure_schema(self) -> None:
        """Migrate the embedded database to head; other databases are the operator's."""
        target = self.target()
        if target.embedded is None or self._migrated:
            return
        self.migrate_embedded(target.embedded)
        self._migrated = True

    def migrate_embedded(self, status: embedded.EmbeddedStatus) -> None:
        """Upgrade the embedded database on ``status`` to head, and say so if it was behind."""
        from omejdn_pg.postgres import migrate

        database = migrate.connect(status.connection())
        try:
            if embedded.with_database(status, lambda: migrate.pending(database)):
                migrate.upgrade(database)
                self.note(f"migrated the embedded database to schema revision {migrate.head()}")
        finally:
            database.dispose()

    def host(self) -> Any:
        """The host facade over this session's database, schema checked."""
        if self._host is None:
            from omejdn_pg.host.facade import Host
            from omejdn_pg.postgres import migrate

            self.ensure_schema()
            host = Host.from_settings(self.target().settings)
            try:
                assert host.postgres is not None
                host.postgres.database.read(migrate.check_schema)
            except BaseException:
                host.close()
                raise
            self._host = host
        return self._host

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None


def session() -> Session:
    return click.get_current_context().ensure_object(Session)


# --- output helpers ------------------------------------------------------------------


def stdout_console() -> Console:
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160, no_color=True)
    return console


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False, default=str))


def print_yaml(data: Any) -> None:
    click.echo(
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False),
        nl=False,
    )


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    stdout_console().print(table)


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
yes_option = click.option("--yes", is_flag=True, help="Do not ask for confirmation.")


def read_text_source(source: str) -> tuple[str, str]:
    """``(text, name for messages)`` of a file, or of stdin for ``-``."""
    if source == "-":
        return sys.stdin.read(), "<stdin>"
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError as exc:
        raise Failure(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise Failure(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc


def parse_document(text: str, name: str, fmt: str = "auto") -> Any:
    """YAML (a superset of JSON) or strict JSON; errors name the source and line."""
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise Failure(f"{name}: line {exc.lineno}: invalid JSON: {exc.msg}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise Failure(f"{name}:{line} {problem}") from exc


def read_password(stdin: bool, prompt: str = "Password") -> str:
    """A new password from stdin (one line) or a hidden, confirmed prompt; never an argument."""
    if stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        if not sys.stdin.isatty():
            raise Failure("no terminal to prompt for the password; use --password-stdin")
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=True, err=True)
    if not password:
        raise Failure("the password is empty")
    return password


def parse_assignment(text: str, as_json: bool) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE")
    return key, parse_value(value, as_json)


def parse_value(value: str, as_json: bool) -> Any:
    if not as_json:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{value!r} is not JSON ({exc.msg})") from exc


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise Failure(f"{question.rstrip('?')}: refusing without a terminal to confirm; use --yes")
    click.confirm(question, abort=True, err=True)


def find(objects: Any, kind: str, name: str) -> Any:
    """The user or client ``name`` of ``objects`` (``host.users``, ``host.clients``)."""
    found = objects.find(name)
    if found is None:
        raise NotFound(f"no {kind} {name!r}")
    return found


def delete_confirmed(objects: Any, kind: str, name: str, yes: bool) -> None:
    """Delete the user or client ``name`` of ``objects`` once the operator confirms."""
    find(objects, kind, name)
    confirm(f"Delete {kind} {name}?", yes)
    objects.delete(name)
    click.echo(f"deleted {kind} {name}")


# --- the command tree ----------------------------------------------------------------


CONTEXT: Final = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.option(
    "--config",
    "config_files",
    multiple=True,
    metavar="FILE",
    help=(
        "Omejdn plugin file(s) with the postgres_backend connection; repeatable or "
        f"':'-separated, merged in order. Default: ${PLUGINS_ENV}."
    ),
)
@click.option(
    "--url",
    metavar="URL",
    help=(
        "libpq URL or key=value string of the database; overrides the plugin files. "
        f"Default: ${URL_ENV}."
    ),
)
@click.option("-q", "--quiet", is_flag=True, help="Say nothing on stderr unless something fails.")
@click.version_option(package_name="omejdn-pg", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, config_files: tuple[str, ...], url: str | None, quiet: bool) -> None:
    """Operate the PostgreSQL storage of an Omejdn server.

    With no connection configured (no --url, no $OMEJDN_PG_URL, no postgres_backend
    in the plugin files), an embedded PostgreSQL is started under ./.omejdn-pg/pgdata
    ($OMEJDN_PG_DATA) and migrated; `omejdn-pg db stop` stops it.
    """
    ses = ctx.ensure_object(Session)
    ses.configure(config_files, url, quiet)
    ctx.call_on_close(ses.close)


# --- db ------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Manage the embedded PostgreSQL (the default when no connection is configured)."""


@db.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (or find it running), migrate it, print its URL."""
    path = embedded.data_dir()
    status, started = embedded.start(path)
    ses = session()
    ses.note(("started" if started else "already running:") + f" the embedded PostgreSQL in {path}")
    ses.migrate_embedded(status)
    click.echo(embedded.url(status.connection()))


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL; its data stays."""
    path = embedded.data_dir()
    if embedded.stop(path):
        session().note(f"stopped the embedded PostgreSQL in {path}")
    else:
        session().note(f"the embedded PostgreSQL in {path} was not running")


@db.command("status")
@json_option
def db_status(as_json: bool) -> None:
    """Whether the embedded PostgreSQL runs, and where (does not start it)."""
    status = embedded.status(embedded.data_dir())
    if as_json:
        print_json(status.as_dict())
        return
    if status.running:
        click.echo(f"running (pid {status.pid}), data in {status.data_dir}")
        click.echo(f"url: {embedded.url(status.connection())}")
    else:
        click.echo(f"stopped, data in {status.data_dir}")


@db.command("url")
def db_url() -> None:
    """Print the embedded PostgreSQL's URL, starting it if needed (for psql, --url)."""
    path = embedded.data_dir()
    status, started = embedded.start(path)
    if started:
        session().note(f"started the embedded PostgreSQL in {path}")
    click.echo(embedded.url(status.connection()))


# --- migrate and check ---------------------------------------------------------------


@cli.group(invoke_without_command=True)
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Schema migrations (Alembic, shipped in the package).

    Without a subcommand: upgrade to the newest revision, as `migrate upgrade`.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(migrate_upgrade, revision="head")


def _revision_text(revision: str | None) -> str:
    return revision or "none (empty database)"


def _migrate(
    connection: ConnectionSettings, step: Callable[[Database], None]
) -> tuple[str | None, str | None]:
    """Run one migration ``step`` on one connection; the revisions before and after it."""
    from omejdn_pg.postgres import migrate as migrations

    database = migrations.connect(connection)
    try:
        before = session().first_contact(lambda: migrations.current(database))
        step(database)
        return before, migrations.current(database)
    finally:
        database.dispose()


@migrate.command("upgrade")
@click.argument("revision", default="head")
def migrate_upgrade(revision: str) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    from omejdn_pg.postgres import migrate as migrations

    connection = session().connection()
    before, after = _migrate(connection, lambda db: migrations.upgrade(db, revision))
    where = connection.describe()
    if before == after:
        click.echo(f"{where}: already at {_revision_text(after)}, nothing to do")
    else:
        click.echo(f"{where}: upgraded from {_revision_text(before)} to {_revision_text(after)}")


@migrate.command("downgrade")
@click.argument("revision")
@yes_option
def migrate_downgrade(revision: str, yes: bool) -> None:
    """Downgrade the schema to REVISION ('base' drops every table and its data)."""
    from omejdn_pg.postgres import migrate as migrations

    connection = session().connection()
    if revision == "base":
        confirm(f"Drop every omejdn_pg table of {connection.describe()} with its data?", yes)
    before, after = _migrate(connection, lambda db: migrations.downgrade(db, revision))
    click.echo(
        f"{connection.describe()}: downgraded from {_revision_text(before)} "
        f"to {_revision_text(after)}"
    )


@migrate.command("current")
def migrate_current() -> None:
    """Print the database's schema revision (nothing if it was never migrated)."""
    from omejdn_pg.postgres import migrate as migrations

    ses = session()
    connection = ses.connection()
    revision = ses.first_contact(lambda: migrations.current(connection))
    click.echo(revision or "")
    if revision is None:
        session().note("the database has no omejdn_pg schema yet; run `omejdn-pg migrate upgrade`")


@migrate.command("history")
@json_option
def migrate_history(as_json: bool) -> None:
    """List the packaged schema revisions, oldest first."""
    from omejdn_pg.postgres import migrate as migrations

    history = migrations.history()
    head = migrations.head()
    if as_json:
        print_json([{"revision": r, "message": m, "head": r == head} for r, m in history])
        return
    print_table(
        None,
        ["revision", "message", ""],
        [(r, m, "(head)" if r == head else "") for r, m in history],
    )


@cli.command()
@json_option
def check(as_json: bool) -> None:
    """Connect and report: server version, schema revision, pending migrations, row counts.

    Exits with status 1 when the database is unreachable or its schema is not at head.
    """
    from sqlalchemy import text

    from omejdn_pg.postgres import migrate as migrations

    ses = session()
    ses.ensure_schema()
    connection = ses.connection()
    database = migrations.connect(connection)
    try:

        def inspect(conn: Any) -> dict[str, Any]:
            version = conn.execute(text("SHOW server_version")).scalar_one()
            tables = list(
                conn.execute(
                    text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                        "AND (tablename IN ('users', 'clients', 'attributes', 'keys') "
                        "OR tablename LIKE 'configuration\\_%') ORDER BY tablename"
                    )
                ).scalars()
            )
            counts: dict[str, int] = {}
            for table in tables:
                quoted = conn.dialect.identifier_preparer.quote(table)
                if table == "clients":
                    statement = f"SELECT count(DISTINCT client_id) FROM {quoted}"
                else:
                    statement = f"SELECT count(*) FROM {quoted}"
                counts[table] = conn.execute(text(statement)).scalar_one()
            return {"server_version": version, "counts": counts}

        facts = database.read(inspect)
        current = migrations.current(database)
    finally:
        database.dispose()
    head = migrations.head()
    pending = migrations.pending_after(current)
    report = {
        "database": connection.describe(),
        "source": ses.target().source,
        "server_version": facts["server_version"],
        "revision": current,
        "head": head,
        "pending": pending,
        "rows": facts["counts"],
        "ok": not pending and current == head,
    }
    if as_json:
        print_json(report)
    else:
        click.echo(f"database:        {report['database']}  ({report['source']})")
        click.echo(f"server version:  {report['server_version']}")
        click.echo(f"schema revision: {_revision_text(current)} (head: {head})")
        click.echo(f"pending:         {', '.join(pending) if pending else 'none'}")
        rows = [
            (name, count, "distinct client_id" if name == "clients" else "rows")
            for name, count in facts["counts"].items()
        ]
        print_table(None, ["table", "count", "of"], rows)
    if not report["ok"]:
        if current is None:
            raise Failure(
                f"the database {connection.describe()} has no omejdn_pg schema; "
                "run `omejdn-pg migrate upgrade`"
            )
        raise Failure(
            f"the schema of {connection.describe()} is at {current}, this omejdn_pg needs {head}; "
            "run `omejdn-pg migrate upgrade`"
        )


# --- import and export ---------------------------------------------------------------


@cli.command("import")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--verbose", "-v", is_flag=True, help="List every change, not only the summary.")
@json_option
def import_(directory: Path, dry_run: bool, verbose: bool, as_json: bool) -> None:
    """Import an Omejdn deployment DIRECTORY (config/*.yml, keys/) into PostgreSQL.

    Every write goes through Omejdn's storage events, all in one transaction: the
    import happens whole or not at all. Only differences are written; what the
    database holds but the directory does not is left alone.
    """
    from omejdn_pg.cli import transfer
    from omejdn_pg.passwords import PasswordPolicy

    ses = session()
    host = ses.host()
    policy = PasswordPolicy(ses.target().settings.passwords)
    err = Console(stderr=True, highlight=False)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=as_json or ses.quiet or not err.is_terminal,
    )
    task = progress.add_task(f"reading {directory}", total=None)

    def on_plan(changes: list[transfer.Change]) -> None:
        if not dry_run:
            progress.update(task, description="importing", total=len(changes), completed=0)

    with progress:
        report = transfer.import_deployment(
            directory,
            host,
            dry_run=dry_run,
            policy=policy,
            on_plan=on_plan,
            progress=lambda _change: progress.advance(task),
        )
    for note in report.notes:
        ses.note(note)
    if as_json:
        print_json(report.as_dict())
        return
    changed = report.changed
    if verbose or dry_run:
        for change in changed:
            verb = {"create": "create", "update": "update"}[change.action.value]
            click.echo(f"{'would ' if dry_run else ''}{verb} {change.kind} {change.name}")
    counts = report.counts()
    title = "dry run, nothing written" if dry_run else f"imported {directory}"
    heading = (
        ["", "would create", "would update", "unchanged"]
        if dry_run
        else ["", "created", "updated", "unchanged"]
    )
    print_table(
        title,
        heading,
        [(kind, c["create"], c["update"], c["unchanged"]) for kind, c in counts.items()],
    )
    if not changed:
        click.echo(f"nothing changed: the database already holds everything in {directory}")
    else:
        click.echo(
            f"{len(changed)} change(s) {'would be written' if dry_run else 'written'} "
            f"in {report.seconds:.2f}s"
        )


@cli.command("export")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Write into a non-empty directory.")
@json_option
def export(directory: Path, force: bool, as_json: bool) -> None:
    """Export the database to DIRECTORY in Omejdn's layout, from one consistent snapshot.

    Safe while the server runs: everything is read in a single REPEATABLE READ
    transaction. Private keys are written with mode 0600.
    """
    from omejdn_pg.cli import transfer

    ses = session()
    report = transfer.export_deployment(ses.host(), directory, force=force)
    for note in report.notes:
        ses.note(note)
    if as_json:
        print_json(report.as_dict())
        return
    counts = report.counts()
    print_table(
        f"exported to {directory}",
        ["", "written"],
        [(kind, c["create"]) for kind, c in counts.items()],
    )
    click.echo(f"done in {report.seconds:.2f}s")


# --- users ---------------------------------------------------------------------------


@cli.group()
def users() -> None:
    """Users: list, show, add, passwd, delete, set-attr."""


def user_view(user: User) -> dict[str, Any]:
    """The user's YAML form, with whether it has a password in place of the hash."""
    fields = user.to_dict()
    del fields["username"]
    fields.pop("password", None)
    return {"username": user.username, "has_password": user.password is not None, **fields}


@users.command("list")
@json_option
def users_list(as_json: bool) -> None:
    """List every user."""
    found = sorted(session().host().users.all(), key=lambda u: u.username)
    if as_json:
        print_json([user_view(u) for u in found])
        return
    print_table(
        f"{len(found)} user(s)",
        ["username", "password", "extern", "attributes"],
        [
            (
                u.username,
                "set" if u.password else "-",
                u.extern or "",
                ", ".join(sorted(u.attributes)),
            )
            for u in found
        ],
    )


@users.command("show")
@click.argument("username")
@json_option
def users_show(username: str, as_json: bool) -> None:
    """Show one user (never the password hash)."""
    view = user_view(find(session().host().users, "user", username))
    print_json(view) if as_json else print_yaml(view)


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
    values = dict(parse_assignment(a, False) for a in attributes)
    values.update(parse_assignment(a, True) for a in json_attributes)
    host = session().host()
    if host.users.find(username) is not None:
        raise AlreadyExists(f"user {username!r} exists already")
    password = None if extern else read_password(password_stdin)
    user = User(username=username, attributes=values, extern=extern)
    with host.batch():
        host.users.add(user)
        if password is not None:
            host.users.update_password(user, password)
    click.echo(f"added user {username}")


@users.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (one line).")
def users_passwd(username: str, password_stdin: bool) -> None:
    """Set a user's password; prompted for (hidden, twice) or read from stdin."""
    host = session().host()
    user: User = find(host.users, "user", username)
    password = read_password(password_stdin, "New password")
    host.users.update_password(user, password)
    click.echo(f"password of {username} changed")


@users.command("delete")
@click.argument("username")
@yes_option
def users_delete(username: str, yes: bool) -> None:
    """Delete a user and its attributes."""
    delete_confirmed(session().host().users, "user", username, yes)


@users.command("set-attr")
@click.argument("username")
@click.argument("key")
@click.argument("value", required=False)
@click.option("--json-value", is_flag=True, help="Parse VALUE as JSON (true, 42, [..], {..}).")
@click.option("--unset", is_flag=True, help="Remove the attribute instead.")
def users_set_attr(
    username: str, key: str, value: str | None, json_value: bool, unset: bool
) -> None:
    """Set (or --unset) one attribute of a user."""
    if unset == (value is not None):
        raise click.UsageError("give either VALUE or --unset")
    host = session().host()
    with host.batch():
        user: User = find(host.users, "user", username)
        if unset:
            if key not in user.attributes:
                raise NotFound(f"user {username!r} has no attribute {key!r}")
            del user.attributes[key]
        else:
            assert value is not None
            user.attributes[key] = parse_value(value, json_value)
        host.users.save(user)
    click.echo(f"{'removed' if unset else 'set'} attribute {key} of {username}")


# --- clients -------------------------------------------------------------------------


@cli.group()
def clients() -> None:
    """OAuth clients: list, show, add, delete, set-cert."""


def client_view(client: Client, show_secret: bool = False) -> dict[str, Any]:
    view = client.to_dict()
    if "client_secret" in view and not show_secret:
        view["client_secret"] = MASK
    return view


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


@clients.command("list")
@json_option
def clients_list(as_json: bool) -> None:
    """List every client (client secrets masked)."""
    found = sorted(session().host().clients.all(), key=lambda c: c.client_id)
    if as_json:
        print_json([client_view(c) for c in found])
        return
    print_table(
        f"{len(found)} client(s)",
        ["client_id", "name", "auth method", "grant types", "scope"],
        [
            (
                c.client_id,
                c.metadata.get("client_name", ""),
                c.metadata.get("token_endpoint_auth_method", ""),
                " ".join(map(str, as_list(c.metadata.get("grant_types")))),
                " ".join(map(str, as_list(c.metadata.get("scope")))),
            )
            for c in found
        ],
    )


@clients.command("show")
@click.argument("client_id")
@click.option("--show-secret", is_flag=True, help="Print client_secret instead of masking it.")
@json_option
def clients_show(client_id: str, show_secret: bool, as_json: bool) -> None:
    """Show one client's metadata, attributes and certificate."""
    host = session().host()
    client: Client = find(host.clients, "client", client_id)
    view = client_view(client, show_secret)
    cert = host.clients.certificate(client)
    if cert is not None:
        view["certificate"] = certificate_view(cert)
    print_json(view) if as_json else print_yaml(view)


def certificate_view(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }


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
    metadata: dict[str, Any] = {}
    if source is not None:
        text, name = read_text_source(source)
        document = parse_document(text, name)
        if not isinstance(document, dict):
            raise Failure(f"{name}: expected a mapping of client metadata")
        metadata.update(document)
    if client_id:
        metadata["client_id"] = client_id
    if not metadata.get("client_id"):
        raise click.UsageError("give CLIENT_ID or a --file with client_id")
    options: dict[str, Any] = {
        "client_name": client_name,
        "token_endpoint_auth_method": auth_method,
        "redirect_uris": list(redirect_uris) or None,
        "grant_types": list(grant_types) or None,
        "scope": list(scopes) or None,
    }
    metadata.update({k: v for k, v in options.items() if v is not None})
    metadata.setdefault("token_endpoint_auth_method", "none")
    metadata.setdefault("grant_types", ["authorization_code"])
    method = metadata["token_endpoint_auth_method"]
    if method not in AUTH_METHODS:
        raise InvalidValue(
            f"token_endpoint_auth_method {method!r} is not one of {', '.join(AUTH_METHODS)}"
        )
    generated = None
    if str(method).startswith("client_secret_") and not metadata.get("client_secret"):
        generated = metadata["client_secret"] = secrets.token_urlsafe(32)
    extra = dict(parse_assignment(a, False) for a in attributes)
    client = Client.from_dict(metadata)
    client.attributes.update(extra)
    client.backend = None
    host = session().host()
    if host.clients.find(client.client_id) is not None:
        raise AlreadyExists(f"client {client.client_id!r} exists already")
    host.clients.add(client)
    click.echo(f"added client {client.client_id}")
    if generated is not None:
        click.echo(f"client_secret: {generated}")


@clients.command("delete")
@click.argument("client_id")
@yes_option
def clients_delete(client_id: str, yes: bool) -> None:
    """Delete a client, its attributes and its certificate."""
    delete_confirmed(session().host().clients, "client", client_id, yes)


@clients.command("set-cert")
@click.argument("client_id")
@click.argument("certificate", required=False, metavar="[CERT_FILE]")
@click.option("--remove", is_flag=True, help="Remove the client's certificate instead.")
def clients_set_cert(client_id: str, certificate: str | None, remove: bool) -> None:
    """Set a client's authentication certificate from a PEM file ('-' for stdin), or --remove it."""
    if remove == (certificate is not None):
        raise click.UsageError("give either CERT_FILE or --remove")
    host = session().host()
    client: Client = find(host.clients, "client", client_id)
    if remove:
        host.clients.set_certificate(client, None)
        click.echo(f"removed the certificate of {client_id}")
        return
    assert certificate is not None
    text, name = read_text_source(certificate)
    chain = KeyMaterial.from_pem(None, text, what=name).certs
    if not chain:
        raise InvalidValue(f"{name}: no certificate found")
    host.clients.set_certificate(client, chain[0])
    click.echo(f"set the certificate of {client_id}: {chain[0].subject.rfc4514_string()}")


# --- config --------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Configuration sections: list, get, set."""


@config.command("list")
@json_option
def config_list(as_json: bool) -> None:
    """List the configuration sections stored in PostgreSQL."""
    host = session().host()
    rows = []
    with host.snapshot():
        for name in host.config.sections():
            data = host.config.read(name)
            shape = "list" if isinstance(data, list) else "dict"
            rows.append({"section": name, "type": shape, "entries": len(data or ())})
    if as_json:
        print_json(rows)
        return
    print_table(
        f"{len(rows)} section(s)",
        ["section", "type", "entries"],
        [(r["section"], r["type"], r["entries"]) for r in rows],
    )


@config.command("get")
@click.argument("section")
@click.option(
    "--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True
)
def config_get(section: str, fmt: str) -> None:
    """Print a configuration section."""
    data = session().host().config.read(section)
    if data is None:
        raise NotFound(f"configuration section {section!r} has never been written")
    print_json(data) if fmt == "json" else print_yaml(data)


@config.command("set")
@click.argument("section")
@click.argument("source", default="-", metavar="[FILE]")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "yaml", "json"]),
    default="auto",
    show_default=True,
    help="Input format; auto reads YAML, of which JSON is a subset.",
)
def config_set(section: str, source: str, fmt: str) -> None:
    """Replace a configuration section with the mapping or list in FILE (default: stdin)."""
    from omejdn_pg.postgres.schema import validate_section_name

    validate_section_name(section)
    text, name = read_text_source(source)
    data = parse_document(text, name, fmt)
    if not isinstance(data, dict | list):
        raise Failure(
            f"{name}: a configuration section must be a mapping or a list, "
            f"got {type(data).__name__}"
        )
    session().host().config.write(section, data)
    click.echo(f"wrote configuration section {section} ({len(data)} entries)")


# --- keys ----------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Keys and certificates: list, generate, import, jwks."""


def key_view(target_type: str, target: str, material: KeyMaterial) -> dict[str, Any]:
    pk = material.pk
    if isinstance(pk, rsa.RSAPublicKey):
        kind = f"RSA {pk.key_size}"
    elif isinstance(pk, ec.EllipticCurvePublicKey):
        names = {curve.name: label for label, curve in EC_CURVES.items()}
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
@json_option
def keys_list(target_type: str | None, as_json: bool) -> None:
    """List key targets (optionally of one TARGET_TYPE, e.g. omejdn or clients)."""
    host = session().host()
    with host.snapshot():
        views = [key_view(tt, t, host.keys.load(tt, t)) for tt, t in host.keys.targets(target_type)]
    if as_json:
        print_json(views)
        return
    print_table(
        f"{len(views)} key target(s)",
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


@keys.command("generate")
@click.argument("target_type")
@click.argument("target")
@click.option("--ec", "curve", type=click.Choice(list(EC_CURVES)), help="An EC key on CURVE.")
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
    host = session().host()
    ensure_replaceable(host, target_type, target, force)
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if curve:
        key = ec.generate_private_key(EC_CURVES[curve])
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    certs = [self_signed_certificate(key, subject or target, days)] if self_signed else []
    material = KeyMaterial(sk=key, certs=certs)
    host.keys.store(target_type, target, material)
    click.echo(f"generated {target_type}/{target}: kid {material.kid}")


def ensure_replaceable(host: Any, target_type: str, target: str, force: bool) -> None:
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
    if key_file is None and cert_file is None:
        raise click.UsageError("give --key FILE, --cert FILE or both")
    key_text, key_name = read_text_source(key_file) if key_file else (None, "")
    cert_text, cert_name = read_text_source(cert_file) if cert_file else (None, "")
    material = KeyMaterial.from_pem(
        key_text, cert_text, what=" and ".join(n for n in (key_name, cert_name) if n)
    )
    if material.is_empty:
        raise InvalidValue("the files hold no key and no certificate")
    host = session().host()
    ensure_replaceable(host, target_type, target, force)
    host.keys.store(target_type, target, material)
    click.echo(f"imported {target_type}/{target}: kid {material.kid}")


@keys.command("jwks")
@click.argument("target_type", default="omejdn")
def keys_jwks(target_type: str) -> None:
    """Print the public keys of TARGET_TYPE (default: omejdn) as a JWK Set."""
    print_json(session().host().keys.jwks(target_type))


# --- entry point ---------------------------------------------------------------------


def _one_line(message: str, secrets_: Sequence[str]) -> str:
    for secret in secrets_:
        message = message.replace(secret, MASK)
    return "; ".join(part.strip() for part in message.strip().splitlines() if part.strip())


def _fail(message: str, secrets_: Sequence[str]) -> None:
    click.echo(f"error: {_one_line(message, secrets_)}", err=True)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status (0 ok, 1 failure, 2 usage)."""
    ses = Session()
    try:
        result = cli.main(args=argv, prog_name=PROG, standalone_mode=False, obj=ses)
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _fail(exc.format_message() + hint, ses.secrets())
        return 2
    except click.ClickException as exc:
        _fail(exc.format_message(), ses.secrets())
        return exc.exit_code
    except click.Abort:
        _fail("aborted", [])
        return 1
    except SchemaOutOfDate as exc:
        _fail(str(exc), ses.secrets())
        return 1
    except OmejdnPgError as exc:
        _fail(str(exc), ses.secrets())
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}", ses.secrets())
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no secret
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        _fail(
            f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)",
            ses.secrets(),
        )
        return 1
    return result if isinstance(result, int) else 0


def main() -> NoReturn:
    """The ``omejdn-pg`` console script."""
    sys.exit(run())
