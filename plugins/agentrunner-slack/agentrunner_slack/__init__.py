"""agentrunner-slack: the ``slack`` gateway (slash commands, messages, mentions and reactions in; answers out).

Registered through the ``agentrunner`` entry point ``slack = agentrunner_slack``. Importing this
module imports no Slack SDK: slack-bolt and slack-sdk load when the gateway starts.
"""

from __future__ import annotations

from typing import Any

import agentrunner
from agentrunner_slack.gateway import SlackGateway

__all__ = ["SlackGateway", "register_gateways", "startup"]


@agentrunner.hookimpl
def register_gateways(register):
    register(SlackGateway())


@agentrunner.hookimpl
def startup(platform: Any) -> None:
    """Give the gateway its settings before the SlackGateway service mounts its webhook (SLACK_WEBHOOK_PATH)."""
    gateway = platform.registry.gateways.get(SlackGateway.name)
    if isinstance(gateway, SlackGateway):
        gateway.configure(platform.settings)
