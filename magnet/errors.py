"""The one base class for errors a user can cause and fix: a bad image, expression, checkpoint,
dataset or setting. Their message names the fix; the CLI and the app print it without a traceback.
Any other exception is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(ValueError):
    """Something the user gave (a file, an expression, a setting) cannot be used; the message says how to fix it."""


class ConfigError(UserError):
    """A setting is unknown or out of range."""
