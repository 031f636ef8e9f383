"""Typed errors: each names the offending file, line or field and says what to do next."""


class TuneopsError(Exception):
    """Base for every error tuneops reports to a user (the CLI prints it and exits 2)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  fix: {hint}")


class NotFound(TuneopsError):
    """A record (dataset, base, run, artifact, alias) does not exist."""


class InvalidInput(TuneopsError):
    """A file, recipe field or argument is malformed."""


class GateFailed(TuneopsError):
    """An artifact's eval gates failed, so the requested promotion is refused."""


class StateError(TuneopsError):
    """An operation is not allowed in the record's current state (e.g. nothing to roll back to)."""
