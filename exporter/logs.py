"""Logging set-up: text or JSON lines, and a filter that keeps secrets out of every record."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable

# environment variables whose values must never be printed, whatever code logs them
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "SLACK_BOT_TOKEN",
    "CUTOVER_CONTROL_TOKEN",
)
MASK = "[redacted]"


class RedactingFilter(logging.Filter):
    """Replaces every known secret value in a record's final text with a mask.

    Code is written never to log a secret; this is the second line of defence for what a
    library (botocore, slack-sdk, aiohttp) might print in an exception.
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self.set_secrets(())

    def set_secrets(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if s and len(s) >= 4}
        values.update(v for k in SECRET_ENV if len(v := os.environ.get(k, "")) >= 4)
        # longest first, so that a secret containing another is masked whole
        self._secrets = tuple(sorted(values, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = self.redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            cleaned = self.redact(formatted)
            if cleaned != formatted:
                record.exc_info = None
                record.exc_text = None
                redacted = f"{redacted}\n{cleaned}"
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


REDACTOR = RedactingFilter()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    # on the handler, so that records of every logger (libraries included) pass through it
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is noise at info level: Prometheus scrapes every few seconds
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # their debug output dumps whole requests, signed headers included: not ours to print
    for name in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
