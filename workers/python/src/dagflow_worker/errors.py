"""Exceptions a handler raises to say whether another attempt may help, and the
error the client raises for an API error answer."""

from __future__ import annotations

from typing import Any


class JobError(Exception):
    """Base of the handler errors; ``str(error)`` becomes the node's error message."""

    retryable: bool = True


class Retryable(JobError):
    """The job failed, and another attempt may succeed (a timeout, a 503, a lock).

    The engine retries if the node has attempts left (``opts.attempts``), after its
    backoff. Any exception other than :class:`Fatal` counts as retryable too; raise
    this one to say so explicitly.
    """

    retryable = True


class Fatal(JobError):
    """The job failed, and another attempt would fail the same way (bad input, a 404):
    the node fails for good whatever attempts it has left."""

    retryable = False


class DagflowError(Exception):
    """The dagflow server answered with an error (``{"error": {code, message, details}}``)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        #: The HTTP status (400, 404, 422, 503, ...).
        self.status = status
        #: The stable machine-readable code (``invalid_flow``, ``flow_not_found``, ...).
        self.code = code
        #: The message for people.
        self.message = message
        #: Context: ``{"problems": [...]}`` for an invalid flow, else usually ``None``.
        self.details = details
