"""agentrunner-bedrock: the ``bedrock`` provider (Amazon Bedrock Runtime Converse API through aiobotocore).

Importing this module is cheap: aiobotocore is imported on the first request.
"""

from __future__ import annotations

import agentrunner
from agentrunner_bedrock.provider import BedrockProvider

__all__ = ["BedrockProvider", "register_providers"]


@agentrunner.hookimpl
def register_providers(register):
    register(BedrockProvider())
