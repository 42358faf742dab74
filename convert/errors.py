"""The converter's user-facing error: raised with a one-line message, printed as `Error: ...`."""

from sen12ms_common.errors import Sen12msError


class ConvertError(Sen12msError):
    """A problem that stops the conversion; the message is one line for the user."""
