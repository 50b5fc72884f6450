"""Secrets kept out of logs: botocore's DEBUG records carry the session token
(request headers, the canonical request); msgcluster's never carry secrets.

A filter on botocore's and aiobotocore's loggers rewrites a record that holds
a security token header or parameter, or a secret a Client was given. It runs
only for records that are emitted (DEBUG off: no cost).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Final

__all__ = ["install", "register_secret"]

_TOKEN: Final = re.compile(
    r"(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,&}]+", re.IGNORECASE
)
_LOGGER_PREFIXES: Final = ("botocore", "aiobotocore", "urllib3", "aiohttp")
_ENV_SECRETS: Final = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Redact ``value`` wherever a botocore record would show it."""
    if value and len(value) >= 8:
        _secrets.add(value)


def redact(text: str) -> str:
    text = _TOKEN.sub(r"\1***", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is logging's business, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER: Final = _RedactSecrets()


def install() -> None:
    """Put the filter on every botocore/aiobotocore logger (idempotent)."""
    for name in _ENV_SECRETS:
        register_secret(os.environ.get(name))
    names = [
        name
        for name in list(logging.Logger.manager.loggerDict)
        if name.split(".", 1)[0] in _LOGGER_PREFIXES
    ]
    for name in [*_LOGGER_PREFIXES, *names]:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
