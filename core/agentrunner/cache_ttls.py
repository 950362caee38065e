"""How long the runtime caches each kind of value, whatever the cache backend.

The reference's Cache TTL Guidelines: agent state 30 min, agent configuration
1 h, execution results 5 min, health status 1 min, anything else 1 h. The
settings ``REDIS_STATE_TTL`` (or ``STATE_CACHE_TTL``), ``REDIS_CONFIG_TTL``,
``REDIS_RESULT_TTL`` and ``REDIS_DEFAULT_TTL`` change them.
"""

from __future__ import annotations

from typing import Any

import attrs

#: Agent state (``REDIS_STATE_TTL`` / ``STATE_CACHE_TTL``), seconds.
STATE_TTL = 1800.0
#: Agent configuration (``REDIS_CONFIG_TTL``), seconds.
CONFIG_TTL = 3600.0
#: Execution results (``REDIS_RESULT_TTL``), seconds.
RESULT_TTL = 300.0
#: Health status, seconds.
HEALTH_TTL = 60.0
#: Anything else (``REDIS_DEFAULT_TTL``), seconds.
DEFAULT_TTL = 3600.0


@attrs.frozen
class CacheTTLs:
    """The TTL, in seconds, of each kind of cached value."""

    state: float = STATE_TTL
    config: float = CONFIG_TTL
    result: float = RESULT_TTL
    health: float = HEALTH_TTL
    default: float = DEFAULT_TTL


def _setting(settings: Any, names: tuple[str, ...], fallback: float) -> float:
    for name in names:
        value = getattr(settings, name, None)
        if value is None:
            continue
        seconds = float(value)
        if seconds <= 0:
            raise ValueError(f"{name.upper()} must be a positive number of seconds (got {value!r})")
        return seconds
    return fallback


def cache_ttls(settings: Any = None) -> CacheTTLs:
    """The TTLs from the settings (attributes ``redis_state_ttl``, ``redis_config_ttl``,
    ``redis_result_ttl``, ``redis_default_ttl``; ``state_cache_ttl`` when ``redis_state_ttl``
    is unset), the reference's values for whatever is missing."""
    return CacheTTLs(
        state=_setting(settings, ("redis_state_ttl", "state_cache_ttl"), STATE_TTL),
        config=_setting(settings, ("redis_config_ttl",), CONFIG_TTL),
        result=_setting(settings, ("redis_result_ttl",), RESULT_TTL),
        health=_setting(settings, ("redis_health_ttl",), HEALTH_TTL),
        default=_setting(settings, ("redis_default_ttl",), DEFAULT_TTL),
    )
