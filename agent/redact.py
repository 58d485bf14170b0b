"""No secret in any line the agent writes: URL user info, bearer tokens and the agent's own token.

``redact(text)`` is the one function: it blanks the ``user:password@`` of
every URL in the text, the value after ``Bearer``, and any of the secrets
registered with ``install_log_redaction`` (the agent's token). The CLI
installs ``SecretFilter`` on every handler of the root logger at start-up, so
a line is cleaned whichever module wrote it, its traceback included.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"
SECRET_MIN_LEN = 6  # shorter "secrets" would blank ordinary words

_USERINFO_RE = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^\s/?#@]*)@")
_BEARER_RE = re.compile(r"(?P<prefix>\bBearer\s+)[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without the user name and password it may carry (``http://***@hub:8080``)."""
    return _USERINFO_RE.sub(lambda m: f"{m['scheme']}{MASK}@", url)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL user info, bearer tokens and each of ``secrets`` replaced by ``***``."""
    text = _BEARER_RE.sub(lambda m: f"{m['prefix']}{MASK}", redact_url(text))
    for secret in secrets:
        if len(secret) >= SECRET_MIN_LEN and secret in text:
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """Rewrites each record's message (and traceback) through ``redact``; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = tuple(secrets)
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's problem, not a reason to drop the line
            return True
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_text is None:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def install_log_redaction(secrets: Iterable[str] = ()) -> SecretFilter:
    """Clean every line of every handler on the root logger (call after ``logging.basicConfig``).

    Called again (a reloaded token), it adds the new secrets to the filter already installed.
    """
    root = logging.getLogger()
    found = next((f for h in root.handlers for f in h.filters if isinstance(f, SecretFilter)), None)
    wanted = tuple(s for s in secrets if s)
    if found is not None:
        found.secrets = tuple(dict.fromkeys((*found.secrets, *wanted)))
        return found
    made = SecretFilter(wanted)
    for handler in root.handlers:
        handler.addFilter(made)
    return made
