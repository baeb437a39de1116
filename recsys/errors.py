"""The base of every error a user can fix: the CLI prints its message, without a traceback."""


class RecsysError(Exception):
    """Bad input, config or state; the message names what was wrong and what was expected."""
