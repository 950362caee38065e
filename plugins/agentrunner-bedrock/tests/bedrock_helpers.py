"""Helpers of the bedrock plugin's tests: canary credentials, settings, a configured provider, an llm_config."""

from __future__ import annotations

from agentrunner_bedrock import BedrockProvider
from bedrock_fake_server import FakeBedrock

from agentrunner.schema import LLMConfig
from agentrunner.settings import load_settings

KEY_ID = "AKIACANARYKEYID00001"
SECRET = "canarySECRETbedrock/0123456789+abcdefghij"
SONNET = "anthropic.claude-3-sonnet-20240229-v1:0"


def make_settings(**environ: str):
    """The platform's settings from these variables only (no .env file)."""
    return load_settings(environ=environ, env_file=None)


def make_provider(**environ: str) -> BedrockProvider:
    """A provider configured as the platform would, with the canary keys unless told otherwise."""
    provider = BedrockProvider()
    provider.configure(make_settings(**{"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, **environ}))
    return provider


def llm(fake: FakeBedrock | None = None, **fields) -> LLMConfig:
    """The reference's example llm_config for Bedrock, pointed at ``fake``."""
    values = {"provider": "bedrock", "model": SONNET, "temperature": 0.7, "max_tokens": 2000, "top_p": 1.0,
              "region": "us-east-1", "endpoint_url": fake.url if fake is not None else None, **fields}
    return LLMConfig(**values, explicit_fields=frozenset(values))
