"""Error types whose messages are one line a user can act on.

The CLI prints ``str(err)`` of any `QadbError` as a single ``error: ...`` line and exits non-zero;
anything else is a bug and gets a traceback.
"""


class QadbError(Exception):
    """Base of every error a user can cause (bad input, bad config, unreachable store)."""

    exit_code = 2


class InputError(QadbError):
    """A file, row, value or unit the user gave cannot be used."""


class ConfigError(QadbError):
    """A malformed configuration file, recipe or setting."""


class StoreError(QadbError):
    """The database cannot be reached, is read-only, or refused a write."""

    exit_code = 3


class StoreLockedError(StoreError):
    """The embedded store is already open for writing by another process."""


class CheckpointError(QadbError):
    """A model checkpoint is missing, corrupt or of the wrong kind."""


class JobError(QadbError):
    """A tracked compute job failed or did not converge; its record stays in the store (`qadb jobs`)."""
