"""Typed errors: each names the offending file, line or field and says what to do next.

The CLI maps every ``TuneopsError`` to its ``exit_code`` (2) with the message and the fix; the
server maps them to OpenAI-shaped error bodies with ``http_status``. Nothing else is shown to
a user as an error message.
"""


class TuneopsError(Exception):
    """Base for every error tuneops reports to a user (the CLI prints it and exits 2)."""

    exit_code = 2
    http_status = 400
    error_type = "invalid_request_error"
    error_code: str | None = None

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  fix: {hint}")


class NotFound(TuneopsError):
    """A record (dataset, base, run, artifact, alias, store) does not exist."""

    http_status = 404
    error_code = "model_not_found"


class InvalidInput(TuneopsError):
    """A file, recipe field or argument is malformed."""


class GateFailed(TuneopsError):
    """An artifact's eval gates failed (or it has none that test its task): promotion is refused, and
    `tuneops eval run --gates` exits 3 so a CI pipeline can tell "worse" from "broken" (2)."""

    exit_code = 3


class StateError(TuneopsError):
    """An operation is not allowed in the record's current state (e.g. nothing to roll back to)."""

    http_status = 409


class IntegrityError(TuneopsError):
    """Stored files no longer match the hashes recorded when they were stored: never load, serve,
    promote or export them."""

    http_status = 503
    error_type = "integrity_error"
    error_code = "integrity_check_failed"


class Contention(TuneopsError):
    """A compare-and-swap kept losing to concurrent writers; nothing was changed."""

    http_status = 409


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) arrived while working: unwinds like KeyboardInterrupt so every
    ``finally`` runs and the run is marked, then the CLI exits 128 + signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by signal {signum}")


class RunStopped(BaseException):
    """A run stopped on purpose after saving a checkpoint: ``paused`` (`tuneops runs pause`) or
    ``interrupted`` (SIGTERM / SIGINT while training: the current step finished and was checkpointed).
    The run is marked with ``state`` and can be resumed."""

    def __init__(self, state: str, reason: str, *, exit_code: int = 0):
        self.state, self.reason, self.exit_code = state, reason, exit_code
        super().__init__(reason)


class RunPruned(BaseException):
    """A hyper-parameter search stopped this trial's run early (its intermediate metric was worse than
    the median of earlier trials): the run is marked ``cancelled`` with the reason."""

    def __init__(self, reason: str = "pruned by the hyper-parameter search"):
        self.reason = reason
        super().__init__(reason)
