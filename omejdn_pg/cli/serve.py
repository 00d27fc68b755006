"""``omejdn-pg serve``: the storage service for the real (Ruby) Omejdn, in the foreground.

Configured exactly as every other command (``--config``/``$OMEJDN_PLUGINS``,
``--url``, the embedded default), so the read cache, replicas, key
encryption, timeouts and failover of the plugin file apply; unlike the other
commands, which live for one operation, it starts the read cache. The
connections are :mod:`omejdn_pg.bridge.service`'s, the socket file
:mod:`omejdn_pg.bridge.endpoint`'s; this module parses, builds the host and
reports.
"""

from __future__ import annotations

import grp
import logging
import sys

import click

from omejdn_pg.cli.context import Command, current

LOG_FORMAT = "omejdn-pg serve: %(levelname)s %(message)s"


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise click.BadParameter(f"no group named {group!r}", param_hint="--group") from None


@click.command(cls=Command)
@click.option(
    "--socket",
    "socket_path",
    required=True,
    metavar="PATH",
    help="The Unix socket to serve at (Omejdn's plugin file names the same path).",
)
@click.option(
    "--group",
    metavar="GROUP",
    help="Make the socket 0660 and owned by GROUP; peers of that primary group are allowed.",
)
@click.option(
    "--allow-uid",
    "allow_uids",
    multiple=True,
    type=int,
    metavar="UID",
    help="Also allow peers running as UID (repeatable); this uid and root always are.",
)
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Only say whether a service answers at PATH (exit 0) or not (exit 1).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Connections served at once; one more gets an error and is closed.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between two 'alive' messages on a watch stream.",
)
def serve(
    socket_path: str,
    group: str | None,
    allow_uids: tuple[int, ...],
    check_only: bool,
    max_connections: int,
    interval: float,
) -> int:
    """Serve Omejdn's storage events on a Unix socket until SIGTERM or Ctrl-C.

    The Ruby plugin `omejdn_pg` (see `omejdn-pg bridge`) forwards every storage
    event of Omejdn here. The wire protocol is JSON-RPC 2.0, one object per line
    (README: "The storage service and its wire protocol").
    """
    from omejdn_pg.bridge import endpoint, service
    from omejdn_pg.bridge.protocol import PROTOCOL_VERSION

    context = current()
    if check_only:
        said = endpoint.check(socket_path)
        context.note(f"{said} answers at {socket_path}")
        return 0
    gid = _gid(group) if group is not None else None
    if endpoint.answers_at(socket_path):
        # Before the host and its read cache start: a second service refused says one line.
        raise endpoint.ServiceError(f"another service answers at {socket_path}")
    _log_to_stderr(context.quiet, context.verbose)
    host = context.host()
    postgres = host.postgres
    if postgres is not None and not postgres.jwks:
        from omejdn_pg.errors import ConfigurationError

        raise ConfigurationError(
            "the storage service speaks Omejdn's current core: set key_events to jwks"
        )
    cache = postgres.start_cache() if postgres is not None else None
    server = service.Service(
        socket_path,
        host,
        allowed_uids=frozenset(allow_uids),
        group=gid,
        interval=interval,
        max_connections=max_connections,
    )
    server.bind()
    # Kept to the end: a second SIGTERM while draining is the same request to stop.
    service.install_stop_signals(server)
    log = logging.getLogger(service.__name__)
    if cache is not None and not cache.wait_until_serving(5.0):
        log.warning("the read cache is not serving yet: watch streams are refused until it is")
    log.info(
        "%s serving at %s (protocol %d, %s, read cache %s)",
        server.name,
        socket_path,
        PROTOCOL_VERSION,
        context.target().settings.connection.describe(),
        "on" if cache is not None else "off",
    )
    # systemd's Type=notify: the socket listens and the log says so; STOPPING=1 is the
    # service's to say when a stop begins.
    endpoint.notify("READY=1")
    server.serve()
    log.info("stopped; answered %d event(s), %d with an error", server.served, server.failed)
    return 0


def _log_to_stderr(quiet: bool, verbose: int) -> None:
    """One line per start, stop, refused peer and error on stderr (the service's log)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    package = logging.getLogger("omejdn_pg")
    package.addHandler(handler)
    package.setLevel(level)
