"""Asking the operator: confirmations and new passwords, never from an argument.

A prompt needs a person, so without a terminal on stdin the command refuses
(and says which option does without the prompt) instead of hanging or reading
a pipe meant for something else. A declined confirmation is a decision, not a
failure: the caller says what was left alone and exits 0.
"""

from __future__ import annotations

import sys

import click

from omejdn_pg.cli.output import Failure


def confirm(question: str, yes: bool) -> bool:
    """Whether to go on: always with ``--yes``, else the person at the terminal says."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise Failure(f"{question.rstrip('?')}: refusing without a terminal to confirm; use --yes")
    return click.confirm(question, default=False, err=True)


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
