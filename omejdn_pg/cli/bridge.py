"""``omejdn-pg bridge``: put Omejdn's Ruby plugin for the storage service where Omejdn loads it.

The plugin (``omejdn_pg.rb``) ships inside this package, so the service and the
plugin that talks to it always come from the same release. ``bridge install``
copies it to ``OMEJDN_DIR/plugins/omejdn_pg/omejdn_pg.rb``, where Omejdn's
``PluginLoader`` requires a plugin named ``omejdn_pg``. The trade-off of a copy
over a link: an upgrade of the package does not change a running Omejdn's
plugin behind its back, so ``install`` is run again after an upgrade — it is
idempotent, and refuses (without ``--force``) to replace a file that differs,
which is either an older release's plugin or someone's local edit.
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Final

import click

from omejdn_pg.cli.context import Command, Group
from omejdn_pg.errors import InvalidInput

PLUGIN_NAME: Final = "omejdn_pg"
"""The name Omejdn's plugin file gives it (``plugins: {omejdn_pg: ...}``)."""


def shipped_plugin() -> Path:
    """The Ruby plugin file inside the installed package."""
    path = resources.files("omejdn_pg") / "bridge" / "ruby" / f"{PLUGIN_NAME}.rb"
    return Path(str(path))


def install_plugin(omejdn_dir: Path, *, force: bool = False) -> tuple[Path, bool]:
    """Write the plugin into ``omejdn_dir``; its path and whether anything was written.

    Raises :class:`InvalidInput` when ``omejdn_dir`` is not an Omejdn checkout
    or when a different file is in the way and ``force`` is not given. The file
    is written beside its final name and renamed over it, so Omejdn never
    requires half a plugin.
    """
    if (
        not (omejdn_dir / "omejdn.rb").is_file()
        or not (omejdn_dir / "lib" / "plugins.rb").is_file()
    ):
        raise InvalidInput(
            f"{omejdn_dir} is not an Omejdn directory (no omejdn.rb and lib/plugins.rb there)"
        )
    content = shipped_plugin().read_bytes()
    target = omejdn_dir / "plugins" / PLUGIN_NAME / f"{PLUGIN_NAME}.rb"
    if target.is_file():
        if target.read_bytes() == content:
            return target, False
        if not force:
            raise InvalidInput(
                f"{target} exists and differs from this release's plugin; use --force to replace it"
            )
    elif target.exists() or target.is_symlink():
        raise InvalidInput(f"{target} exists and is not a regular file")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{PLUGIN_NAME}.", suffix=".rb")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target, True


@click.group("bridge", cls=Group)
def bridge() -> None:
    """Omejdn's Ruby plugin for `omejdn-pg serve`: where it is, and installing it.

    \b
    Omejdn's plugin file then reads:
      plugins:
        omejdn_pg:
          socket: /run/omejdn-pg/omejdn-pg.sock
      deactivate_defaults: [config, keys, client, user]
    """


@bridge.command("path", cls=Command)
def path() -> None:
    """Print the path of the Ruby plugin shipped with this package."""
    click.echo(str(shipped_plugin()))


@bridge.command("install", cls=Command)
@click.argument(
    "omejdn_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    metavar="OMEJDN_DIR",
)
@click.option("--force", is_flag=True, help="Replace a different existing plugin file.")
def install(omejdn_dir: Path, force: bool) -> None:
    """Write the plugin to OMEJDN_DIR/plugins/omejdn_pg/omejdn_pg.rb.

    Idempotent: an identical file is left alone. A different file there is
    refused unless --force is given.
    """
    target, written = install_plugin(omejdn_dir, force=force)
    click.echo(f"{'installed' if written else 'already installed'}: {target}")
