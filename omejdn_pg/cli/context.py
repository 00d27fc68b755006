"""What every command shares: the global options and the connection they resolve to.

One :class:`CliContext` is made per invocation (``app.run``) and filled by the
global options wherever they are given — before the subcommand or after it
(``omejdn-pg users list --url ...``); a later one wins, ``--config`` adds up.
Nothing is resolved while options are parsed, so ``--help`` touches no
database and imports no driver: this module imports click and nothing heavy
at module level, and the settings, the Host and the embedded server are
imported when a command first asks for them.

Where the database is, first match wins: ``--url``, ``$OMEJDN_PG_URL``, the
``postgres_backend`` section of the plugin files (``--config``, default
``$OMEJDN_PLUGINS``), else the embedded PostgreSQL, started and migrated on
demand. A command opens one engine (one :class:`Database`) and builds the
:class:`Host` over it when it first asks for the host; both are closed with
the command. A listing asks for the Database alone, so it pays neither for
the Host nor for what the Host imports (the plugin, the key and password
libraries). The trade-off: a command that needs no database still pays
nothing, but one that does pays the driver's import on its first database
call, not before.

Over 400 lines on purpose: the global options, the callbacks that fill the
context and the lazy resolution they feed are one job, read best in one module.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from omejdn_pg.settings.static import PLUGINS_ENV

if TYPE_CHECKING:
    from omejdn_pg.cli.embedded import EmbeddedStatus
    from omejdn_pg.postgres.database.unit_of_work import Database
    from omejdn_pg.service.host import Host
    from omejdn_pg.settings.backend import BackendSettings
    from omejdn_pg.settings.connection import ConnectionSettings
    from omejdn_pg.settings.static import StaticConfiguration

T = TypeVar("T")

PROG: Final = "omejdn-pg"
URL_ENV: Final = "OMEJDN_PG_URL"
OUTPUT_FORMATS: Final = ("table", "json", "yaml")
CONTEXT_SETTINGS: Final = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
URL_PASSWORD_WARNING: Final = (
    "warning: the password in --url is visible to every user of this machine (`ps`) and "
    "in the shell's history; put it in PGPASSWORD, ~/.pgpass or a service file, or the "
    f"whole URL in ${URL_ENV}"
)
GLOBAL_OPTIONS_HINT: Final = (
    f"The global options (--url, --config, -o/--json, -q, -v) work here too; see '{PROG} --help'."
)


@dataclasses.dataclass
class Target:
    """Where this invocation's database is, and what that was decided from."""

    settings: BackendSettings
    source: str
    embedded: EmbeddedStatus | None = None


class CliContext:
    """The global options of one invocation, and the connection they resolve to."""

    def __init__(self, host: Host | None = None) -> None:
        """``host``: use this host instead of resolving one (embedding, tests); not closed here."""
        self.config_files: list[str] = []
        self.url: str | None = None
        self.output: str | None = None
        self.quiet = False
        self.verbose = 0
        self._target: Target | None = None
        self._host: Host | None = host
        self._owns_host = host is None
        self._database: Database | None = None
        self._migrated = False
        self.warnings: list[str] = []
        self.public_keys_only = False
        """Set by commands that read no private key (``keys list``, ``keys jwks``): they
        run without the key-encryption keys, reading sealed keys as their public half."""
        """Said after the command succeeded (an error stays the one line on stderr)."""

    # --- what the operator sees on stderr ----------------------------------------

    def note(self, message: str) -> None:
        """Say something on stderr, unless ``-q``."""
        if not self.quiet:
            click.echo(f"{PROG}: {message}", err=True)

    def say_warnings(self) -> None:
        """The warnings gathered while the command ran, unless ``-q``."""
        for warning in self.warnings:
            self.note(warning)
        self.warnings.clear()

    def info(self, message: str) -> None:
        """Say something on stderr only with ``-v`` (and without ``-q``)."""
        if self.verbose and not self.quiet:
            click.echo(f"{PROG}: {message}", err=True)

    def output_format(self, default: str = "table") -> str:
        """``-o`` (``--json``), else ``default``."""
        return self.output or default

    def secrets(self) -> list[str]:
        """Passwords that must not appear in any message."""
        from omejdn_pg.errors import OmejdnPgError
        from omejdn_pg.settings.connection import ConnectionSettings

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

    # --- where the database is ----------------------------------------------------

    def static(self) -> StaticConfiguration:
        from omejdn_pg.settings.static import StaticConfiguration

        if self.config_files:
            return StaticConfiguration.from_files(self.config_files)
        return StaticConfiguration.from_env()

    def target(self) -> Target:
        """Where the database is; starts the embedded server if that is where."""
        if self._target is None:
            self._target = self._resolve()
        return self._target

    def _resolve(self) -> Target:
        from omejdn_pg.errors import located
        from omejdn_pg.settings.backend import HANDLER_GROUPS, PLUGIN_NAME
        from omejdn_pg.settings.connection import ConnectionSettings
        from omejdn_pg.settings.validation import key_encryption_from_env, require_chosen_connection

        static = self.static()
        section_present = static.plugins.get(PLUGIN_NAME) is not None
        base = dataclasses.replace(static.backend_settings(), handlers=frozenset(HANDLER_GROUPS))
        key_encryption = key_encryption_from_env()
        if key_encryption is not None:
            base = dataclasses.replace(base, key_encryption=key_encryption)
        url, source = self.url, "--url"
        if not url and os.environ.get(URL_ENV):
            url, source = os.environ[URL_ENV], f"${URL_ENV}"
        if url:
            with located(source):
                connection = ConnectionSettings.from_url(url)
            if source == "--url" and "password" in connection.params:
                self.warnings.append(URL_PASSWORD_WARNING)
            return Target(dataclasses.replace(base, connection=connection), source)
        if section_present:
            require_chosen_connection(base)
            return Target(base, static.source)
        from omejdn_pg.cli import embedded

        path = embedded.data_dir()
        status, started = embedded.start(path)
        where = f"{path} ({embedded.url(status.connection())})"
        if started:
            self.note(f"started the embedded PostgreSQL in {where}")
        else:
            self.info(f"using the embedded PostgreSQL in {where}")
        return Target(
            dataclasses.replace(base, connection=status.connection(), source=f"embedded {path}"),
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
        from omejdn_pg.cli import embedded

        return embedded.with_database(status, operation)

    def ensure_schema(self) -> None:
        """Migrate the embedded database to head; other databases are the operator's."""
        target = self.target()
        if target.embedded is None or self._migrated:
            return
        self.migrate_embedded(target.embedded)
        self._migrated = True

    def migrate_embedded(self, status: EmbeddedStatus) -> None:
        """Upgrade the embedded database on ``status`` to head, and say so if it was behind."""
        from omejdn_pg.cli import embedded
        from omejdn_pg.postgres import migrate

        database = migrate.connect(status.connection())
        try:
            found = embedded.with_database(status, lambda: migrate.current(database))
            # At head, as on every run but the first, the scripts (and Alembic) stay unread.
            if found != migrate.HEAD and migrate.pending_after(found):
                migrate.upgrade(database)
                self.note(f"migrated the embedded database to schema revision {migrate.head()}")
        finally:
            database.dispose()

    # --- the host ---------------------------------------------------------------------

    def host(self) -> Host:
        """The host facade over this invocation's database (one engine), schema checked."""
        if self._host is None:
            from omejdn_pg.service.host import Host

            settings = self.target().settings
            if self.public_keys_only:
                settings = without_missing_keks(settings)
            self._host = Host.from_settings(settings, database=self.database())
            if self.public_keys_only and self._host.postgres is not None:
                from omejdn_pg.sealing import Keyring

                keys = self._host.postgres.keyring.keys
                self._host.postgres.keyring = Keyring(keys, public_only=True)
        return self._host

    def database(self) -> Database:
        """The one Database (engine) of this invocation, schema checked; builds no host.

        With a host handed in, the Database its PostgreSQL backend uses.
        """
        if self._host is not None:
            return postgres_of(self._host)
        if self._database is None:
            from omejdn_pg.postgres import migrate
            from omejdn_pg.postgres.database.unit_of_work import Database

            self.ensure_schema()
            database = Database.for_backend(self.target().settings)
            try:
                self.first_contact(lambda: database.read(migrate.check_schema))
            except BaseException:
                database.dispose()
                raise
            self._database = database
        return self._database

    def postgres_alone(self) -> bool:
        """Whether PostgreSQL is the host's only backend, for users and clients alike.

        True of the CLI's own host (``Host.from_settings`` with no default file
        plugin), so a command may read PostgreSQL without building it; a host
        handed in may have other backends and must be asked.
        """
        return self._owns_host

    def close(self) -> None:
        if self._host is not None and self._owns_host:
            self._host.close()
            self._host = None
        if self._database is not None:
            # Already disposed with the host if one was built over it; disposing twice is safe.
            self._database.dispose()
            self._database = None


def without_missing_keks(settings: BackendSettings) -> BackendSettings:
    """``settings`` without ``key_encryption`` when its keys cannot be had (a variable
    not set, a file not readable): for a command that reads no private key."""
    from omejdn_pg.errors import ConfigurationError
    from omejdn_pg.sealing import Keyring

    try:
        Keyring.from_settings(settings.key_encryption)
    except ConfigurationError:
        return dataclasses.replace(settings, key_encryption=())
    return settings


def postgres_of(host: Host) -> Database:
    """The Database of ``host``'s PostgreSQL backend (the CLI's host always has one)."""
    if host.postgres is None:  # pragma: no cover - Host.from_settings always attaches it
        raise RuntimeError("the host has no PostgreSQL backend")
    return host.postgres.database


def current() -> CliContext:
    """The CliContext of the running command."""
    return click.get_current_context().ensure_object(CliContext)


# --- global options: accepted before and after the subcommand ---------------------------


def _context_of(ctx: click.Context) -> CliContext:
    return ctx.ensure_object(CliContext)


def _add_config(ctx: click.Context, _param: click.Parameter, value: Sequence[str]) -> None:
    _context_of(ctx).config_files.extend(p for item in value for p in item.split(":") if p)


def _set_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _context_of(ctx).url = value


def _set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _context_of(ctx).output = value


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _context_of(ctx).output = "json"


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _context_of(ctx).quiet = True


def _add_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    _context_of(ctx).verbose += value


def global_options(*, hidden: bool) -> list[click.Parameter]:
    """Fresh global options; they fill the CliContext instead of becoming arguments."""
    common: dict[str, Any] = {"expose_value": False, "hidden": hidden}
    return [
        click.Option(
            ["--config", "config_files"],
            multiple=True,
            metavar="FILE",
            callback=_add_config,
            help=(
                "Omejdn plugin file(s) with the postgres_backend connection; repeatable or "
                f"':'-separated, merged in order. Default: ${PLUGINS_ENV}."
            ),
            **common,
        ),
        click.Option(
            ["--url"],
            metavar="URL",
            callback=_set_url,
            help=(
                "The database: postgresql://, postgres://, postgresql+psycopg:// or libpq "
                f"key=value; overrides the plugin files. Default: ${URL_ENV}. Leave the "
                "password out (`ps` shows arguments): PGPASSWORD, ~/.pgpass or a service file."
            ),
            **common,
        ),
        click.Option(
            ["-o", "--output"],
            type=click.Choice(OUTPUT_FORMATS),
            callback=_set_output,
            help="Output format of data (default: table; one object prints as YAML).",
            **common,
        ),
        click.Option(
            ["--json"], is_flag=True, callback=_set_json, help="Same as -o json.", **common
        ),
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            callback=_set_quiet,
            help="Say nothing on stderr unless something fails, and print no summary of "
            "import, export or migrate (data asked for with -o still prints).",
            **common,
        ),
        click.Option(
            ["-v", "--verbose"],
            count=True,
            callback=_add_verbose,
            help="Say more: notes, attribute values, field-level import diffs.",
            **common,
        ),
    ]


class Command(click.Command):
    """A subcommand: accepts the global options (hidden in its help, named in the epilog)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)
        self.params.extend(global_options(hidden=True))

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        formatter.write_paragraph()
        formatter.write_text(GLOBAL_OPTIONS_HINT)


class Group(click.Group):
    """A command group whose commands and subgroups accept the global options."""

    command_class = Command
    group_class = type
    hide_global_options = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)
        self.params.extend(global_options(hidden=self.hide_global_options))

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if self.hide_global_options:
            formatter.write_paragraph()
            formatter.write_text(GLOBAL_OPTIONS_HINT)


def interactive() -> bool:
    """Whether a person can answer a prompt (stdin is a terminal)."""
    return sys.stdin.isatty()
