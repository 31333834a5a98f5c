"""The one exception type for mistakes a user can make (bad paths, configs, tensors, options), and the decorator
with which every command turns it into a single message and exit status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import sys

import click


class UserError(Exception):
    """Bad input from the user: the message alone must say what is wrong and where."""


def user_errors(fn):
    """Turns UserError into one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper
