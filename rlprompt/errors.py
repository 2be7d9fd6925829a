"""The one exception type that the CLIs turn into a one-line message."""


class UserError(ValueError):
    """Bad input from the user: a file, flag or value. The message names the problem in one line."""
