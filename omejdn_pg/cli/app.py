"""``omejdn-pg``: the operator's command line — the root group, its global options, ``main``.

Every command that touches data goes through the Host, i.e. through
Omejdn's storage events, exactly as the server's own writes do; listings read
through one streamed statement (:mod:`omejdn_pg.postgres.repositories.listing`),
and ``check`` counts rows. One module per command group
(``omejdn_pg.cli.users``, ``.clients``, ...), loaded only when its command
runs or help lists it: importing this module imports click and nothing of
SQLAlchemy, psycopg, alembic, cryptography or rich, so ``--help`` is quick.

Errors are one line on stderr, ``error: ...``, exit status 1 (2 for a usage
error, 130 after Ctrl-C); a password never appears in one. A reader that goes
away (``| head``) ends the command quietly with status 0: the reader had
what it wanted, and ``set -o pipefail`` scripts must not fail on it.
``OMEJDN_PG_DEBUG=1`` adds the traceback of an unexpected error.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Final, NoReturn

import click

from omejdn_pg.cli.context import PROG, CliContext, Group, current
from omejdn_pg.cli.output import print_error
from omejdn_pg.errors import OmejdnPgError

DEBUG_ENV: Final = "OMEJDN_PG_DEBUG"
SIGINT_STATUS: Final = 130

COMMANDS: Final = {
    "db": "omejdn_pg.cli.db:db",
    "migrate": "omejdn_pg.cli.migrate:migrate",
    "check": "omejdn_pg.cli.check:check",
    "import": "omejdn_pg.cli.transfer_commands:import_",
    "export": "omejdn_pg.cli.transfer_commands:export",
    "backup": "omejdn_pg.cli.backup:backup",
    "restore": "omejdn_pg.cli.backup:restore",
    "users": "omejdn_pg.cli.users:users",
    "clients": "omejdn_pg.cli.clients:clients",
    "config": "omejdn_pg.cli.config:config",
    "keys": "omejdn_pg.cli.keys:keys",
    "completion": "omejdn_pg.cli.completion:completion",
    "serve": "omejdn_pg.cli.serve:serve",
    "bridge": "omejdn_pg.cli.bridge:bridge",
}
"""Each command's ``module:attribute``, imported only when it is needed."""


class ReaderGone(Exception):
    """stdout's reader closed the pipe (EPIPE): the command ends, successfully."""


class LazyGroup(Group):
    """The root group: subcommands are imported from :data:`COMMANDS` on first use."""

    hide_global_options = False

    def invoke(self, ctx: click.Context) -> object:
        # Caught here, before click's main turns it into exit status 1.
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise ReaderGone from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        path = COMMANDS.get(cmd_name)
        if path is None:
            return None
        module_name, _, attribute = path.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):  # pragma: no cover - a wiring mistake
            raise TypeError(f"{path} is not a click command")
        return command


@click.group(cls=LazyGroup, invoke_without_command=True)
@click.version_option(package_name="omejdn-pg", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Operate the PostgreSQL storage of an Omejdn server.

    With no connection configured (no --url, no $OMEJDN_PG_URL, no postgres_backend
    in the plugin files), an embedded PostgreSQL is started under ./.omejdn-pg/pgdata
    ($OMEJDN_PG_DATA) and migrated; `omejdn-pg db stop` stops it. The global options
    below may also follow the subcommand.
    """
    ctx.call_on_close(current().close)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _interrupted(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind ``exc`` (click's Abort), None for a closed stdin."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _interrupted_message(interrupt: KeyboardInterrupt) -> str:
    """``interrupted``, with what the command knows of its writes (``import``: none)."""
    said = str(interrupt)
    return f"interrupted: {said}" if said else "interrupted"


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is left at exit raises nothing."""
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - a stdout without a descriptor
        pass
    finally:
        os.close(devnull)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status (0 ok, 1 failure, 2 usage, 130 interrupted)."""
    context = CliContext()
    try:
        result = cli.main(args=argv, prog_name=PROG, standalone_mode=False, obj=context)
    except ReaderGone:
        # `omejdn-pg users list | head -2`: what was read is all that was wanted.
        _discard_stdout()
        return 0
    except click.exceptions.NoArgsIsHelpError as exc:
        # A group given no subcommand (`omejdn-pg users`): its help, as for `--help`.
        click.echo(exc.ctx.get_help())
        return 0
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        print_error(exc.format_message() + hint, context.secrets())
        return 2
    except click.ClickException as exc:
        print_error(exc.format_message(), context.secrets())
        return exc.exit_code
    except click.Abort as exc:
        interrupt = _interrupted(exc)
        if interrupt is not None:
            print_error(_interrupted_message(interrupt))
            return SIGINT_STATUS
        print_error("aborted: no answer (stdin closed)")
        return 1
    except KeyboardInterrupt as interrupt:
        print_error(_interrupted_message(interrupt))
        return SIGINT_STATUS
    except OmejdnPgError as exc:
        print_error(str(exc), context.secrets())
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print_error(f"{where}{exc.strerror or exc}", context.secrets())
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no secret
        if os.environ.get(DEBUG_ENV):
            import traceback

            traceback.print_exc()
        print_error(
            f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)",
            context.secrets(),
        )
        return 1
    context.say_warnings()
    return result if isinstance(result, int) else 0


def main() -> NoReturn:
    """The ``omejdn-pg`` console script."""
    try:
        status = run()
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C between two handlers
        status = SIGINT_STATUS
    sys.exit(status)
