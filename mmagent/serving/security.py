"""API-key checks and redaction of personal data from logged text.

Keys: sent as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``; compared with
:func:`hmac.compare_digest` against every configured key (no early exit on the first match, so
the time taken does not tell which key was close).

Redaction: e-mail addresses, card numbers (13-19 digits, spaces/dashes allowed), IBANs, other long
digit runs (account numbers) and phone numbers are replaced by ``[EMAIL]``, ``[CARD]``, ``[IBAN]``,
``[ACCOUNT]`` and ``[PHONE]`` in every log line the server writes (:class:`RedactingFormatter`).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Iterable, Mapping

API_KEY_HEADER = "X-API-Key"

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
# 13-19 digits, optionally grouped by single spaces or dashes: payment cards.
CARD = re.compile(r"(?<![\w+])\d(?:[ \-]?\d){12,18}(?![\w])")
# International or national phone numbers: optional +CC, optional (area), groups of digits.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{7,15}|(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{1,5}\)[\s.\-]?)?\d{2,6}(?:[\s.\-]\d{2,6}){1,4})(?![\w])")
_DATE = re.compile(r"\b\d{4}[-./]\d{1,2}[-./]\d{1,2}\b|\b\d{1,2}[-./]\d{1,2}[-./]\d{4}\b")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# Any remaining run of 8+ digits (account, customer, social-security style numbers).
ACCOUNT = re.compile(r"(?<![\w+])\d{8,}(?![\w])")


def redact(text: str) -> str:
    """Replace e-mails, card / IBAN / account numbers and phone numbers in ``text``."""
    if not text:
        return text
    text = EMAIL.sub("[EMAIL]", text)
    text = IBAN.sub("[IBAN]", text)
    text = CARD.sub("[CARD]", text)
    text = ACCOUNT.sub("[ACCOUNT]", text)
    text = PHONE.sub(_phone, text)
    return text


def _phone(match: re.Match[str]) -> str:
    value = match.group(0)
    digits = sum(c.isdigit() for c in value)
    # 7+ digits make a phone number; dates ("2024-01-05 12") and IPv4 addresses are kept.
    if digits < 7 or _DATE.search(value) or _IPV4.fullmatch(value):
        return value
    return "[PHONE]"


def redacted_record(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of ``record`` whose message (with its arguments) and traceback text are redacted;
    the timestamp and other fields the format adds are left alone."""
    import copy

    clean = copy.copy(record)
    clean.msg, clean.args = redact(record.getMessage()), None
    if record.exc_info and not record.exc_text:
        clean.exc_text = logging.Formatter().formatException(record.exc_info)
    clean.exc_info = None
    if clean.exc_text:
        clean.exc_text = redact(clean.exc_text)
    if record.stack_info:
        clean.stack_info = redact(record.stack_info)
    return clean


class RedactingFormatter(logging.Formatter):
    """A formatter that redacts every message, its arguments and tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(redacted_record(record))


def install_redaction(logger_names: Iterable[str] = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "mmagent")) -> None:
    """Wrap the formatter of every handler on these loggers so their output is redacted."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            fmt = handler.formatter
            if isinstance(fmt, RedactingFormatter) or isinstance(getattr(handler, "_mmagent_redacting", None), bool):
                continue
            handler.setFormatter(_Wrapped(fmt))
            handler._mmagent_redacting = True  # type: ignore[attr-defined]


class _Wrapped(logging.Formatter):
    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return self.inner.format(redacted_record(record))


def log_config(level: str = "info") -> dict:
    """uvicorn ``log_config``: its usual format, with every line redacted."""
    lvl = level.upper() if level != "trace" else "DEBUG"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"()": "mmagent.serving.security.RedactingFormatter", "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "access": {"()": "mmagent.serving.security.RedactingFormatter", "format": "%(asctime)s %(levelname)s access: %(message)s"},
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": ["access"], "level": lvl, "propagate": False},
            "mmagent": {"handlers": ["default"], "level": lvl, "propagate": False},
        },
    }


# -- keys ---------------------------------------------------------------------------------------
def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``X-API-Key``, else ``Authorization: Bearer``."""
    key = headers.get(API_KEY_HEADER.lower()) or headers.get(API_KEY_HEADER)
    if key:
        return key.strip()
    auth = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def key_matches(presented: str | None, keys: Iterable[str]) -> bool:
    """Constant-time comparison against every configured key."""
    if presented is None:
        return False
    given = presented.encode("utf-8", "surrogatepass")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode("utf-8", "surrogatepass"))
    return ok
