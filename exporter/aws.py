"""boto3 clients as cutover makes them: standard retries, explicit timeouts, and a small footprint.

A botocore client keeps its session's loader, and the loader keeps every JSON file it parsed to
build the client: `endpoints.json` alone is 6.7 MB of Python objects, held for the life of the
daemon although the client never reads it again (its endpoint and model are built by then).
`make_client` drops that cache once the client exists; a later need (a paginator's definition,
say) loads its own small file again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

import boto3
from botocore.config import Config

__all__ = ["credential_secrets", "make_client", "scrub"]

# key ids (AKIA... long-term, ASIA... temporary) and request signatures an answer might echo
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b")
_SIGNATURE = re.compile(r"(Signature=)[0-9a-fA-F]+")
_MASK = "[redacted]"


def make_client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None,
    timeout: float,
    max_attempts: int,
) -> tuple[Any, Any]:
    """(client, credentials) for `service` on the standard credential chain. Blocking: call it
    from a worker thread.

    `max_attempts` counts every attempt, the first included (botocore's `max_attempts` key
    would count retries only). The credentials are returned so that callers can keep them out
    of error texts.
    """
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    session = boto3.session.Session(region_name=region)
    client = cast(Any, session).client(service, endpoint_url=endpoint_url, config=config)
    forget_parsed_files(session)
    return client, session.get_credentials()


def forget_parsed_files(session: boto3.session.Session) -> None:
    """Empty the session loader's cache of parsed data files (see the module's docstring).

    The cache is botocore's per-loader dict; if a botocore release renames it, nothing is
    dropped and nothing breaks.
    """
    loader = session._session.get_component("data_loader")
    cache = getattr(loader, "_cache", None)
    if isinstance(cache, dict):
        cache.clear()


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` (an AWS answer's error, say) without the given secret values, AWS key ids or
    request signatures."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return _SIGNATURE.sub(rf"\1{_MASK}", _KEY_ID.sub(_MASK, text))


def credential_secrets(credentials: Any) -> list[str]:
    """The values of a botocore credentials object that must never be shown."""
    try:
        frozen = credentials.get_frozen_credentials()
    except Exception:  # no credentials (or none yet), or refreshing them fails: nothing to hide
        return []
    return [v for v in (frozen.secret_key, frozen.token, frozen.access_key) if v]
