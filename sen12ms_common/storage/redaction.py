"""The one redaction of credentials from text that leaves a command (its lines on stdout and
stderr, its log records, the option values it writes to files): the user info of a URL
(`s3://KEY:SECRET@`, `https://TOKEN@`, percent-encoded or not) and the values of signing query
parameters (`?X-Amz-Signature=...`, `X-Amz-Credential`, `X-Amz-Security-Token`, `Signature`,
`sig`, `token`, ...)."""

from __future__ import annotations

import logging
import re
from typing import Callable

# The user info of a URL (`s3://KEY:SECRET@bucket/...`); a secret may hold '/', a bucket never ':'.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?:[^\s/@:]*:[^\s@]*|[^\s/@]*)@")
# A query parameter whose value is a signature, a key or a token (presigned S3 URLs, SAS tokens).
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[A-Za-z0-9_.-]*-)?(?:signature|credential|security-token|securitytoken|token|sig|"
    r"secret|password|passwd|access[-_]?key|awsaccesskeyid|key|auth|authorization|session[-_]?token)=)"
    r"(?:[^\s&#;\"'):]|:(?!\s|$))*", re.IGNORECASE)  # up to the next parameter, or a message's ': '



def redact(text: object) -> str:
    """`text` with the user info of every URL in it replaced by `***@` and the value of every
    signing query parameter by `***`."""
    text = _USERINFO.sub(r"\g<scheme>***@", str(text))
    return _SECRET_PARAM.sub(r"\g<name>***", text)


def has_user_info(url: str) -> bool:
    """Whether `url` names a user (and maybe a password or token) before its host."""
    return _USERINFO.match(str(url).strip()) is not None


def redacting(echo: Callable[[str], None]) -> Callable[[str], None]:
    """`echo` that prints `redact(message)`."""
    return lambda message, *args, **kwargs: echo(redact(message), *args, **kwargs)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose records are redacted (messages, arguments and tracebacks alike)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_warnings_to_stderr() -> None:
    """The commands' logging: warnings and errors to stderr as `LEVEL: message`, redacted."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(handler.formatter._fmt if handler.formatter else None))
