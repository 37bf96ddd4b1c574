"""Errors that reach the user as one line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for: a recipe, a path, a target, a file.

    The message must stand alone on one line and name the problem and where it is (file, key path,
    layer name). The CLI prints it as ``taylorprune: error: <message>`` and exits with code 2.
    """
