"""Fixtures of the bedrock plugin's tests: an isolated AWS environment, the fake Bedrock, a configured provider."""

from __future__ import annotations

import pytest
from bedrock_fake_server import FakeBedrock
from bedrock_helpers import make_provider


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch, tmp_path):
    """No credentials, profile or instance role from the machine running the tests."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_BEDROCK_ENDPOINT",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
async def fake():
    """The fake Bedrock Runtime on 127.0.0.1 (a port of its own)."""
    server = await FakeBedrock().start()
    yield server
    await server.stop()


@pytest.fixture
async def provider():
    """A provider configured with the canary keys, closed after the test."""
    provider = make_provider()
    yield provider
    await provider.aclose()
