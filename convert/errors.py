"""The converter's user-facing error: raised with a one-line message, printed as `Error: ...`."""


class ConvertError(Exception):
    """A problem that stops the conversion; the message is one line for the user."""
