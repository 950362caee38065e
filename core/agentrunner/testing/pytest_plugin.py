"""The pytest plugin of agentrunner (entry point ``pytest11``): what a plugin's tests need.

Installed with agentrunner, it gives every test suite:

- the contract suites of ``agentrunner.testing`` (``store_contract.StateStoreContract``,
  ``bus_contract.EventBusContract``, ``cache_contract.CacheContract``), to subclass with a ``store``,
  ``bus`` or ``cache`` fixture;
- ``require_service(name, host, port)``: skips a test when a real service is not
  reachable — but fails it under ``CI=true``, where a missing service is an error;
- the ``agentrunner_platform`` fixture: ``async with agentrunner_platform(environ, files=...,
  plugins=...) as platform`` runs a real platform in the test's ``tmp_path``;
- the ``agentrunner_http`` fixture: ``async with agentrunner_http(platform) as client`` is an
  HTTP client of one of its services.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import pytest


def service_missing(message: str) -> None:
    """Skip the calling test because a service it needs is missing — or, under ``CI=true``, fail it
    (CI has every service, so a missing one is a broken machine)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI=true: tests that need it fail instead of skipping", pytrace=False)
    pytest.skip(message)


def require_service(name: str, host: str, port: int, *, timeout: float = 2.0) -> None:
    """``service_missing`` unless ``name`` accepts connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        service_missing(f"{name} is not reachable at {host}:{port} ({exc.strerror or exc})")


@pytest.fixture
def agentrunner_platform(tmp_path) -> Callable[..., Any]:
    """A factory of started platforms in this test's ``tmp_path`` (embedded defaults unless ``environ``
    says otherwise), stopped when the ``async with`` ends."""
    from agentrunner.testing.platform import running_platform

    def make(environ: Mapping[str, str] = (), **kwargs: Any):
        return running_platform(tmp_path, environ, **kwargs)

    return make


@pytest.fixture
def agentrunner_http() -> Callable[..., Any]:
    """``agentrunner_http(platform, service="orchestrator")``: an aiohttp test client of that service."""
    from agentrunner.testing.platform import http_client

    return http_client
