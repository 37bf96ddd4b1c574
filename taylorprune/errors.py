"""Errors that reach the user as one line and exit code 2."""

from __future__ import annotations

_WORKER_PREFIX = "Caught "
_WORKER_MARK = "\nOriginal Traceback"


class UserError(Exception):
    """A problem with what the user asked for: a recipe, a path, a target, a file.

    The message must stand alone on one line and name the problem and where it is (file, key path,
    layer name). The CLI prints it as ``taylorprune: error: <message>`` and exits with code 2.

    Raised inside a ``DataLoader`` worker (an unreadable image), the error is re-created by torch in
    the main process from a message that holds the worker's whole traceback; the constructor keeps
    only the original message, so the error the user sees is still the one line it was raised with.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(self._unwrap_worker(str(message)))

    @classmethod
    def _unwrap_worker(cls, message: str) -> str:
        if not (message.startswith(_WORKER_PREFIX) and _WORKER_MARK in message):
            return message
        # The traceback's last line is "<module>.<QualName>: <original message>".
        marker = f"\n{cls.__module__}.{cls.__qualname__}: "
        at = message.rfind(marker)
        return message[at + len(marker) :].strip() if at >= 0 else message
