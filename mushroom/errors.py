"""Errors a user can act on. Scripts print them as one sentence (no stack trace) and exit 2."""


class UserError(Exception):
    """A problem with the user's input, files or network: the message says what failed and what to do."""


class ConfigError(UserError):
    """config.yaml or a --set override is invalid; the message names the key."""


class NetworkError(UserError):
    """A remote service could not be reached."""
