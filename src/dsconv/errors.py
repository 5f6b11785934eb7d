"""User-facing errors: each carries one line that names the problem and the fix."""


class DsconvError(Exception):
    """Base class for errors caused by the user's input rather than a bug.

    The CLI prints ``error: <message>`` on one line and exits non-zero; tracebacks are
    shown only with ``debug=true``.
    """


class ConfigError(DsconvError, ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


class DataError(DsconvError):
    """Dataset files are missing, unreadable, or fail their checksum."""
