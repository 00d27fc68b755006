"""``omejdn-pg completion bash|zsh|fish``: the shell completion script, from click.

The script calls ``omejdn-pg`` back with ``_OMEJDN_PG_COMPLETE`` set, and
click answers with the commands, options and choices of the command line as
typed so far. The trade-off is click's: every Tab runs the program once —
cheap here, since completing imports no database driver.
"""

from __future__ import annotations

from typing import Final

import click

from omejdn_pg.cli.context import PROG, Command

COMPLETE_VAR: Final = "_OMEJDN_PG_COMPLETE"
SHELLS: Final = ("bash", "zsh", "fish")


@click.command("completion", cls=Command)
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash:  echo 'eval "$(omejdn-pg completion bash)"' >> ~/.bashrc
    zsh:   echo 'eval "$(omejdn-pg completion zsh)"' >> ~/.zshrc
    fish:  omejdn-pg completion fish > ~/.config/fish/completions/omejdn-pg.fish
    """
    click.echo(completion_script(shell), nl=False)


def completion_script(shell: str) -> str:
    """click's completion script for the root command of the running invocation."""
    from click.shell_completion import get_completion_class

    root = click.get_current_context().find_root()
    complete = get_completion_class(shell)
    if complete is None:  # pragma: no cover - SHELLS are click's own
        raise click.BadParameter(f"no completion for {shell}")
    return complete(root.command, {}, root.info_name or PROG, COMPLETE_VAR).source()
