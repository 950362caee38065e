"""Keeping secrets out of responses, errors and logs.

The values of the settings' secrets (``Secret`` fields) and of environment variables whose names look
secret are hidden wherever they end up — a URL, a prompt, an error, a log line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from agentrunner.settings import VARIABLES

#: Variables outside the settings reference whose values are treated as secrets (the reference's
#: own secrets are known: the settings hold them as ``Secret``).
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|SIGNING|AUTH|COOKIE|"
                         r"SESSION|(^|_)PASS($|_)|(^|_)DSN($|_)|DATABASE_URL$", re.IGNORECASE)
#: Shorter values are not hidden: they would garble every message containing them, and are no secret.
MIN_SECRET_LENGTH = 6
REDACTED = "***"


class Redactor:
    """Hides secret values inside any JSON-able value: the values of secret-looking environment
    variables and of the settings' secrets, wherever ``${VAR}`` put them (a URL, a prompt, an error)."""

    def __init__(self, values: Iterable[str]) -> None:
        found = sorted({value for value in values if len(value) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, found))) if found else None

    @classmethod
    def from_settings(cls, settings: Any, also: Iterable[str] = ()) -> Redactor:
        """The settings' secrets, and the values of other variables whose names look secret."""
        values = [value.get_secret_value() for value in _attributes(settings) if hasattr(value, "get_secret_value")]
        environ = getattr(settings, "environ", None) or {}
        values += [value for name, value in environ.items() if name not in VARIABLES and SECRET_NAME.search(name)]
        # a comma-separated list (API_KEY during a rotation) also hides each of its items
        values += [item.strip() for value in list(values) if "," in value for item in value.split(",")]
        return cls([*values, *also])

    def __call__(self, value: Any) -> Any:
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self._pattern.sub(REDACTED, value)
        if isinstance(value, Mapping):
            return {self(key): self(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self(item) for item in value]
        return value


def _attributes(settings: Any) -> list[Any]:
    fields = getattr(type(settings), "__attrs_attrs__", None)
    if fields is not None:
        return [getattr(settings, field.name, None) for field in fields]
    return list(getattr(settings, "__dict__", {}).values())
