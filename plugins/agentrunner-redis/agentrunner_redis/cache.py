"""The ``redis`` cache: JSON values with per-key TTLs in Redis (redis-py's ``redis.asyncio``).

Every key is ``REDIS_KEY_PREFIX`` + the caller's key, in database ``REDIS_DB``.
Values are stored as compact JSON text; one whose JSON is larger than
``STATE_COMPRESSION_THRESHOLD`` bytes is stored zlib-compressed behind a marker
byte (when ``STATE_COMPRESSION_ENABLED``), so plain and compressed values can
both be read whatever the settings were when they were written.

The cache is an optimisation: each call is bounded by ``CACHE_OPERATION_TIMEOUT``
and raises ``CacheUnavailable`` when Redis cannot answer, and the caller falls
back to the state store. After a connection failure, calls fail at once for
``retry_interval`` seconds instead of each waiting for a timeout; the next call
after that (or ``health()``) tries Redis again, so the cache recovers by itself.
A write or delete that failed may have left an old value in Redis (the store has
the new one), so those keys are deleted as soon as Redis answers again, before
any other call: a cache that comes back never serves what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # redis is imported once the cache is chosen, so loading the plugin stays fast
    from redis.asyncio import Redis
    from redis.asyncio.connection import BlockingConnectionPool

log = logging.getLogger("agentrunner.redis")

T = TypeVar("T")

#: First byte of a zlib-compressed value. Plain values are JSON text, which never starts with it.
COMPRESSED = b"\x00"
#: At most this many keys whose write failed are remembered for deletion once Redis is back.
MAX_STALE_KEYS = 100_000
#: Keys per UNLINK when they are deleted.
_UNLINK_BATCH = 500


class CacheUnavailable(Exception):
    """Redis cannot be reached or refused the call; the caller may fall back, since the cache is an optimisation.

    The message names the settings to check and never holds the password.
    """


class RedisCache:
    """The ``redis`` cache (``CACHE_BACKEND=redis``, or ``REDIS_HOST`` set).

    ``ttl`` is in seconds (fractions allowed); ``ttl=None`` means ``REDIS_DEFAULT_TTL``
    and a ``ttl`` of zero or less deletes the key. Building it opens nothing.
    """

    name = "redis"
    #: Seconds during which calls fail at once after Redis was found unreachable.
    retry_interval = 1.0

    def __init__(self, settings: Any) -> None:
        # Imported when the cache is chosen, not at start(): `agentrunner worker` builds the platform once
        # before it forks, and its fork server preloads what is imported by then (recycled children too).
        import redis.asyncio  # noqa: F401

        self.host: str = settings.redis_host or "localhost"
        self.port = int(settings.redis_port)
        self.db = int(settings.redis_db)
        self._password: str | None = (
            settings.redis_password.get_secret_value() if settings.redis_password else None
        ) or None
        self.max_connections = int(settings.redis_max_connections)
        self.socket_timeout = float(settings.redis_socket_timeout)
        self.socket_connect_timeout = float(settings.redis_socket_connect_timeout)
        self.ssl = bool(settings.redis_ssl)
        self.key_prefix: str = settings.redis_key_prefix
        self.operation_timeout = float(settings.cache_operation_timeout)
        self.default_ttl = float(settings.redis_default_ttl)
        self.compression_enabled = bool(settings.state_compression_enabled)
        self.compression_threshold = int(settings.state_compression_threshold)
        # Server settings, applied at start when given. The policy has a default, so it is applied when it was
        # set explicitly, or together with a memory limit (without one, Redis never evicts anyway).
        self.maxmemory: int | None = settings.redis_maxmemory
        policy_set = "REDIS_MAXMEMORY_POLICY" in settings.set_variables
        self.maxmemory_policy: str | None = (
            settings.redis_maxmemory_policy if policy_set or self.maxmemory is not None else None
        )
        self._client: Redis | None = None
        self._down = False
        self._down_until = 0.0
        # full keys whose last write or delete failed: Redis may still hold an older value
        self._stale: set[str] = set()
        self._stale_overflow = False

    @property
    def address(self) -> str:
        """``host:port`` as it appears in messages (no credentials)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    # --- Lifecycle ------------------------------------------------------------------------

    def make_connection_pool(self) -> BlockingConnectionPool:
        """The connection pool ``start()`` uses, built from the settings; it opens nothing.

        A blocking pool makes callers wait (within ``CACHE_OPERATION_TIMEOUT``) for a free
        connection instead of failing when all ``REDIS_MAX_CONNECTIONS`` are busy. One retry
        on a fresh connection covers a pooled connection that died while idle.
        """
        from redis.asyncio.connection import BlockingConnectionPool, Connection, SSLConnection
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options: dict[str, Any] = {
            "connection_class": Connection,
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "password": self._password,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 1),
            "client_name": "agentrunner",
            "max_connections": self.max_connections,
            "timeout": self.operation_timeout,
        }
        if self.ssl:
            options.update(connection_class=SSLConnection, ssl_cert_reqs="required", ssl_check_hostname=True,
                           ssl_min_version=ssl.TLSVersion.TLSv1_2)
        return BlockingConnectionPool(**options)

    async def start(self) -> None:
        """Connect and check that Redis answers; then apply ``REDIS_MAXMEMORY`` / ``REDIS_MAXMEMORY_POLICY``.

        Raises ``CacheUnavailable`` naming the settings to check when Redis cannot be used.
        """
        if self._client is not None:
            return
        from redis.asyncio import Redis

        client = Redis.from_pool(self.make_connection_pool())
        try:
            async with asyncio.timeout(self.socket_connect_timeout + self.operation_timeout):
                await client.ping()
        except Exception as exc:
            await client.aclose()
            raise CacheUnavailable(self._start_error(exc)) from exc
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._down, self._down_until = False, 0.0
        await self._apply_server_settings(client)
        log.info("cache: Redis at %s, database %d, key prefix %r", self.address, self.db, self.key_prefix)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def health(self) -> None:
        """Raises ``CacheUnavailable`` unless Redis answers a PING now (it always tries, even while failing fast)."""
        await self._call("PING", lambda client: client.ping(), probe=True)

    # --- Cache --------------------------------------------------------------------------------

    async def get(self, key: str) -> Any | None:
        raw = await self._call("GET", lambda client: client.get(self.key_prefix + key))
        return None if raw is None else self.decode(raw, key)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        payload = self.encode(value)  # a value that is not JSON-able fails here, before Redis is asked
        seconds = self.default_ttl if ttl is None else ttl
        if seconds <= 0:
            await self.delete(key)
            return
        milliseconds = max(1, round(seconds * 1000))
        await self._write("SET", self.key_prefix + key,
                          lambda client: client.set(self.key_prefix + key, payload, px=milliseconds))

    async def delete(self, key: str) -> None:
        await self._write("DEL", self.key_prefix + key, lambda client: client.delete(self.key_prefix + key))

    def encode(self, value: Any) -> bytes:
        """The bytes stored for ``value``: its JSON text, zlib-compressed behind ``COMPRESSED`` when large."""
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if self.compression_enabled and len(text) > self.compression_threshold:
            packed = zlib.compress(text)
            if len(packed) + len(COMPRESSED) < len(text):
                return COMPRESSED + packed
        return text

    def decode(self, raw: bytes, key: str = "") -> Any:
        """The value ``encode`` stored as ``raw``, compressed or not."""
        try:
            if raw[:1] == COMPRESSED:
                raw = zlib.decompress(raw[len(COMPRESSED):])
            return json.loads(raw)
        except (zlib.error, ValueError) as exc:
            raise ValueError(f"Redis key {self.key_prefix + key!r} does not hold a value written by agentrunner "
                             f"(another program uses REDIS_KEY_PREFIX {self.key_prefix!r}?)") from exc

    # --- Calls, failures and recovery ---------------------------------------------------------

    async def _call(self, command: str, call: Callable[[Redis], Awaitable[T]], *, probe: bool = False) -> T:
        """Run one call within ``CACHE_OPERATION_TIMEOUT``, turning every Redis failure into ``CacheUnavailable``."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import OutOfMemoryError, RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        client = self._client
        if client is None:
            raise CacheUnavailable("the Redis cache is not started")
        if not probe and self._down and time.monotonic() < self._down_until:
            raise CacheUnavailable(f"Redis at {self.address} was unreachable moments ago (REDIS_HOST, REDIS_PORT); "
                                   f"trying again within {self.retry_interval:g}s")
        try:
            async with asyncio.timeout(self.operation_timeout):
                if self._stale and not probe:
                    await self._delete_stale(client)
                result = await call(client)
        except TimeoutError:
            raise self._unreachable(f"no answer to {command} within {self.operation_timeout:g}s "
                                    "(CACHE_OPERATION_TIMEOUT)") from None
        except RedisTimeoutError:
            raise self._unreachable(f"no answer to {command} within {self.socket_timeout:g}s "
                                    "(REDIS_SOCKET_TIMEOUT)") from None
        except (RedisConnectionError, OSError) as exc:
            raise self._unreachable(self._reason(exc)) from None
        except RedisError as exc:  # Redis answered with an error: out of memory, read-only replica, no permission
            full = isinstance(exc, OutOfMemoryError)
            hint = " (REDIS_MAXMEMORY is reached and REDIS_MAXMEMORY_POLICY evicts nothing)" if full else ""
            raise CacheUnavailable(f"Redis at {self.address} refused {command}: {self._reason(exc)}{hint}") from None
        if self._down:
            log.info("Redis at %s answers again; the cache is back", self.address)
            self._down = False
        return result

    async def _write(self, command: str, full_key: str, call: Callable[[Redis], Awaitable[Any]]) -> None:
        """Run a write; if it fails, remember the key so an older value left in Redis is deleted later."""
        try:
            await self._call(command, call)
        except CacheUnavailable:
            if len(self._stale) < MAX_STALE_KEYS:
                self._stale.add(full_key)
            elif full_key not in self._stale and not self._stale_overflow:
                self._stale_overflow = True
                log.error("more than %d cache writes failed while Redis at %s was unavailable: older values may "
                          "be served until their TTL ends", MAX_STALE_KEYS, self.address)
            raise
        self._stale.discard(full_key)

    async def _delete_stale(self, client: Redis) -> None:
        """Delete the keys whose write failed, so nothing they held before is served now."""
        pending = list(self._stale)
        for start in range(0, len(pending), _UNLINK_BATCH):
            batch = pending[start:start + _UNLINK_BATCH]
            await client.unlink(*batch)
            self._stale.difference_update(batch)
        self._stale_overflow = False

    def _unreachable(self, reason: str) -> CacheUnavailable:
        message = f"cannot reach Redis at {self.address} (REDIS_HOST, REDIS_PORT): {reason}"
        if not self._down:
            log.warning("%s; cache calls fall back to the state store until it answers again", message)
        self._down = True
        self._down_until = time.monotonic() + self.retry_interval
        return CacheUnavailable(message)

    def _start_error(self, exc: BaseException) -> str:
        """What went wrong connecting, and which settings to check."""
        from redis.exceptions import AuthenticationError, ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        where = f"cannot connect to Redis at {self.address}"
        if _caused_by(exc, (TimeoutError, RedisTimeoutError)):
            hint = "; with REDIS_SSL=true the server must speak TLS" if self.ssl else ""
            return (f"{where} (REDIS_HOST, REDIS_PORT): timed out (REDIS_SOCKET_CONNECT_TIMEOUT="
                    f"{self.socket_connect_timeout:g}s, REDIS_SOCKET_TIMEOUT={self.socket_timeout:g}s: raise them "
                    f"if the server is slow to answer{hint})")
        if isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            if self._password is None:
                return f"{where}: the server requires a password (set REDIS_PASSWORD)"
            return f"{where}: the server refused the password (REDIS_PASSWORD)"
        if isinstance(exc, ResponseError) and "DB index" in str(exc):
            return f"{where}: the server has no database {self.db} (REDIS_DB): {self._reason(exc)}"
        untrusted = _cause(exc, ssl.SSLCertVerificationError)
        if isinstance(untrusted, ssl.SSLCertVerificationError):
            return (f"{where}: its TLS certificate is not trusted: {untrusted.verify_message or untrusted} (REDIS_SSL, "
                    "REDIS_HOST: the certificate must name the host; trust a private CA with SSL_CERT_FILE)")
        if _caused_by(exc, (ssl.SSLError,)):
            return f"{where}: TLS failed (REDIS_SSL): {self._reason(exc)}"
        if _caused_by(exc, (socket.gaierror,)):
            return f"{where} (REDIS_HOST): unknown host"
        if _caused_by(exc, (ConnectionRefusedError,)):
            return f"{where} (REDIS_HOST, REDIS_PORT): connection refused"
        return f"{where} (REDIS_HOST, REDIS_PORT, REDIS_SSL): {self._reason(exc)}"

    def _reason(self, exc: BaseException) -> str:
        """A short reason for ``exc``, without the password even if a message echoed it."""
        if _caused_by(exc, (ConnectionRefusedError,)):
            reason = "connection refused"
        elif _caused_by(exc, (ConnectionResetError, BrokenPipeError)):
            reason = "connection reset by the server"
        elif _caused_by(exc, (socket.gaierror,)):
            reason = "unknown host"
        else:
            reason = str(exc) or type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "**********")
        return reason

    async def _apply_server_settings(self, client: Redis) -> None:
        """``CONFIG SET`` the memory limit and eviction policy when given; a server that refuses gets a warning."""
        from redis.exceptions import RedisError

        wanted: list[tuple[str, str, str]] = []
        if self.maxmemory is not None:
            wanted.append(("maxmemory", str(self.maxmemory), "REDIS_MAXMEMORY"))
        if self.maxmemory_policy is not None:
            wanted.append(("maxmemory-policy", self.maxmemory_policy, "REDIS_MAXMEMORY_POLICY"))
        for parameter, value, variable in wanted:
            try:
                async with asyncio.timeout(self.operation_timeout):
                    current = (await client.config_get(parameter)).get(parameter)
                    if current != value:
                        await client.config_set(parameter, value)
                        log.info("Redis at %s: set %s %s (%s)", self.address, parameter, value, variable)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("Redis at %s did not accept %s=%s (%s); set `%s %s` in redis.conf instead",
                            self.address, variable, value, self._reason(exc), parameter, value)


def _cause(exc: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
    """``exc``, or the first exception it was raised from or during, that is one of ``kinds``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    return _cause(exc, kinds) is not None
