"""Slack's request signatures (version ``v0``), checked on the raw body before anything parses it.

Slack signs ``v0:{X-Slack-Request-Timestamp}:{body}`` with HMAC-SHA256 and the app's signing
secret and sends ``v0=<hex digest>`` in ``X-Slack-Signature``. A request whose timestamp is more
than five minutes away from now is refused too, so a captured request cannot be replayed later.
https://docs.slack.dev/authentication/verifying-requests-from-slack
"""

from __future__ import annotations

import hashlib
import hmac
import time

#: The only signature version Slack uses (``SLACK_SIGNATURE_VERSION``).
VERSION = "v0"
#: How far (seconds) a request's timestamp may be from now, either way.
MAX_AGE_SECONDS = 300
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
SIGNATURE_HEADER = "X-Slack-Signature"


class SignatureError(Exception):
    """Why a request was refused; the message never holds the secret or the expected signature."""


def sign(secret: str, timestamp: str, body: bytes, version: str = VERSION) -> str:
    """The signature Slack sends for ``body`` sent at ``timestamp`` (Unix seconds, as in the header)."""
    base = f"{version}:{timestamp}:".encode() + body
    return f"{version}=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, *, version: str = VERSION,
           now: float | None = None, max_age: float = MAX_AGE_SECONDS) -> None:
    """Raise ``SignatureError`` unless ``signature`` is Slack's signature of ``body`` at a recent ``timestamp``.

    The comparison takes the same time wherever the signatures differ.
    """
    if not timestamp or not signature:
        raise SignatureError(f"the {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header is missing")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix time") from None
    now = time.time() if now is None else now
    if abs(now - sent_at) > max_age:
        raise SignatureError(f"{TIMESTAMP_HEADER} is more than {max_age:g} s away from now (a replay?)")
    expected = sign(secret, timestamp, body, version).encode()
    # surrogateescape: a header with bytes that are not UTF-8 is a wrong signature, not a server error
    if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape")):
        raise SignatureError("the signature does not match the body")
