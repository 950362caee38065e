"""Checks the core's tests share (a module of its own: pytest's conftest is not importable by name)."""

from __future__ import annotations

import os

import pytest


def service_unavailable(what: str, error: BaseException) -> None:
    """Under CI a missing service fails the run; on a laptop the test is skipped with the reason."""
    message = f"{what} is not reachable: {error!r}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)
