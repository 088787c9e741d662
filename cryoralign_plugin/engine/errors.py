"""The one exception type for bad input: its message names the problem and the fix."""


class InputError(ValueError):
    """Raised for input the engine cannot use; the CLI prints it without a traceback."""
