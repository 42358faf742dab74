"""The refusal of credentials in a URL; the storage errors themselves (one line naming the URL,
credentials redacted) are in `sen12ms_common.errors`."""

from __future__ import annotations

from ..errors import StorageAccessError
from .redaction import has_user_info, redact


def refuse_credentials(url: str) -> None:
    """Credentials belong in the environment or the AWS files, never in a URL (they would end up in
    logs, shell histories and arguments files): a URL with user info is refused."""
    if has_user_info(url):
        raise StorageAccessError(f"{redact(url)}: credentials in a URL are refused; set AWS_ACCESS_KEY_ID / "
                                 "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead", str(url))


