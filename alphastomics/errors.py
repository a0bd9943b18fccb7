"""User-facing errors: the command line prints their message and exits non-zero, without a traceback."""


class AlphaSTomicsError(Exception):
    """An error caused by input or configuration, with a message that names the file or key."""


class InputError(AlphaSTomicsError):
    """A bad input file (missing, unreadable, wrong content)."""


class ConfigError(AlphaSTomicsError):
    """A bad configuration value or key."""
