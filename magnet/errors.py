"""The one base class for errors a user can cause and fix: a bad image, expression, checkpoint,
dataset or setting. Their message names the fix; the CLI and the app print it without a traceback.
Any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """Something the user gave (a file, an expression, a setting) cannot be used; the message says how to fix it."""


class ConfigError(UserError):
    """A setting is unknown or out of range."""


def exit_code_of(command: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Runs a command-line entry point: a UserError prints `error: <message>` and gives 2, Ctrl-C
    prints `interrupted` and gives 130; anything else is a bug and keeps its traceback."""
    try:
        return command()
    except (UserError, FileNotFoundError) as exc:  # a missing file named on the command line is the user's too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
