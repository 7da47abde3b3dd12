"""The one user-facing exception family.

Every error a user can act on is an :class:`ExpoError`: a message, an optional hint, and an exit
code. The CLI formats it once at the top (no traceback); library callers can catch it.
"""

from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class ExpoError(Exception):
    """A failure with a message meant for the user.

    Args:
        message: what went wrong, naming the file, line, field, tensor or variable.
        hint: what to do about it, if there is something to do.
    """

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(ExpoError):
    """A bad command line or argument."""

    exit_code = EXIT_USAGE


class ManifestError(ExpoError):
    """One or more problems in a manifest, each naming file:line and the field."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[str], hint: str | None = None):
        self.problems = problems
        head = "manifest is invalid" if len(problems) != 1 else "manifest is invalid"
        body = "\n".join(f"  {p}" for p in problems)
        super().__init__(
            f"{head} ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{body}", hint
        )


class CheckpointError(ExpoError):
    """A checkpoint that cannot be read, or a pair that cannot be extrapolated."""


class HubError(ExpoError):
    """A Hub reference that cannot be resolved, fetched or published."""


class ScoringError(ExpoError):
    """A prompt set, template, backend or scorer problem."""
