"""Reaching PostgreSQL: the asyncpg arguments the settings give, and errors that say what to check.

Every PostgreSQL setting is read here, once (``ConnectionConfig.from_settings``); the README's
settings table says how each maps. Messages name the variables to check and never hold a
password: the target is shown as ``host:port/database``, and any password that might appear in
a driver's message is masked.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from agentrunner.interfaces import StoreUnavailable

#: ECHO_SQL writes each statement here at INFO: its text and duration, never its parameters.
sql_log = logging.getLogger("agentrunner_postgres.sql")

#: Prepared statements each connection keeps (asyncpg's default); 0 when the query cache is off.
STATEMENT_CACHE_SIZE = 100

_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)


@attrs.frozen
class ConnectionConfig:
    """What the settings say about the connection and the pool, in asyncpg's terms."""

    #: The URL to connect to (holds the password): DATABASE_URL, else built from POSTGRES_*.
    dsn: str | None = attrs.field(repr=False)
    #: DATABASE_URL was given: it is the variable to check, and its own sslmode applies.
    from_url: bool = False
    #: asyncpg's ``ssl=`` (libpq's sslmode names); None leaves it to the URL.
    ssl_mode: str | None = "prefer"
    min_size: int = 5
    #: POSTGRES_MAX_POOL_SIZE + POSTGRES_POOL_MAX_OVERFLOW: asyncpg's pool has no overflow.
    max_size: int = 30
    #: Seconds to open a connection, and to wait for a free one.
    pool_timeout: float = 30.0
    #: The server's statement_timeout in milliseconds; 0 for none.
    statement_timeout_ms: int = 30000
    echo_sql: bool = False
    statement_cache_size: int = STATEMENT_CACHE_SIZE
    #: Passwords to mask in any message (the URL's and POSTGRES_PASSWORD).
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)

    @classmethod
    def from_settings(cls, settings: Any) -> ConnectionConfig:
        dsn_secret = settings.postgres_dsn
        dsn = dsn_secret.get_secret_value() if dsn_secret is not None else None
        secrets = []
        if settings.postgres_password is not None:
            secrets.append(settings.postgres_password.get_secret_value())
        if dsn:
            password = _url_password(dsn)
            if password:
                secrets += [password, unquote(password)]
        from_url = bool(settings.database_url)
        return cls(
            dsn=dsn,
            from_url=from_url,
            ssl_mode=None if from_url else settings.postgres_ssl_mode,
            min_size=settings.postgres_min_pool_size,
            max_size=settings.postgres_max_pool_size + settings.postgres_pool_max_overflow,
            pool_timeout=settings.postgres_pool_timeout,
            statement_timeout_ms=settings.postgres_statement_timeout,
            echo_sql=settings.postgres_echo_sql,
            statement_cache_size=STATEMENT_CACHE_SIZE if settings.postgres_enable_query_cache else 0,
            secrets=tuple(sorted({s for s in secrets if s}, key=len, reverse=True)),
        )

    @property
    def command_timeout(self) -> float | None:
        """The client's bound on one statement: the server cancels it first, so this only fires when
        the server or the network stops answering. None when POSTGRES_STATEMENT_TIMEOUT is 0."""
        if self.statement_timeout_ms <= 0:
            return None
        return self.statement_timeout_ms / 1000 + self.pool_timeout

    def connect_kwargs(self, *, admin: bool = False) -> dict[str, Any]:
        """Arguments of ``asyncpg.connect`` / ``create_pool``. ``admin`` connections (migrations,
        maintenance) have no statement timeout: an index build or a VACUUM may take long."""
        server_settings = {"statement_timeout": "0" if admin else str(self.statement_timeout_ms)}
        if "application_name" not in _url_query(self.dsn or ""):
            server_settings["application_name"] = "agentrunner"
        kwargs: dict[str, Any] = {
            "dsn": self.dsn,
            "timeout": self.pool_timeout,
            "statement_cache_size": self.statement_cache_size,
            "command_timeout": None if admin else self.command_timeout,
            "server_settings": server_settings,
        }
        if self.ssl_mode is not None:
            kwargs["ssl"] = self.ssl_mode
        return kwargs

    @property
    def target(self) -> str:
        """``host:port/database`` of the URL, without user or password."""
        return describe_target(self.dsn or "")

    def mask(self, text: str) -> str:
        """``text`` with any password (and any URL's user information) replaced by ``***``."""
        text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def connect_error(self, exc: BaseException) -> StoreUnavailable:
        """A failure to open a connection, as a message that names what to check."""
        reason, variables = self._diagnose(exc)
        error = StoreUnavailable(self.mask(f"cannot connect to PostgreSQL at {self.target} ({variables}): {reason}"))
        error.__cause__ = exc
        return error

    def unavailable(self, exc: BaseException, doing: str = "") -> StoreUnavailable:
        """An outage while running: the server went away, stopped answering, or cancelled a statement."""
        import asyncpg

        if isinstance(exc, asyncpg.QueryCanceledError):
            message = (f"PostgreSQL at {self.target} cancelled {doing or 'a statement'} after the statement timeout "
                       f"of {self.statement_timeout_ms} ms (POSTGRES_STATEMENT_TIMEOUT): {exc}")
        elif isinstance(exc, TimeoutError):
            message = (f"PostgreSQL at {self.target} did not answer {doing or 'a statement'} within "
                       f"{self.command_timeout or self.pool_timeout:g} s (POSTGRES_STATEMENT_TIMEOUT + "
                       f"POSTGRES_POOL_TIMEOUT)")
        else:
            message = f"PostgreSQL at {self.target} is unavailable: {_reason(exc)}"
        error = StoreUnavailable(self.mask(message))
        error.__cause__ = exc
        return error

    def _diagnose(self, exc: BaseException) -> tuple[str, str]:
        import asyncpg

        url = "DATABASE_URL"
        address = url if self.from_url else "POSTGRES_HOST, POSTGRES_PORT"
        if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
            return _reason(exc), url if self.from_url else "POSTGRES_USER, POSTGRES_PASSWORD"
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return _reason(exc), url if self.from_url else "POSTGRES_DB"
        if isinstance(exc, asyncpg.TooManyConnectionsError):
            return _reason(exc), "POSTGRES_MAX_POOL_SIZE, POSTGRES_POOL_MAX_OVERFLOW, or the server's max_connections"
        if isinstance(exc, ssl.SSLError | ssl.CertificateError) or _is_ssl_refusal(exc):
            return _reason(exc), "the sslmode of DATABASE_URL" if self.from_url else "POSTGRES_SSL_MODE"
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.pool_timeout:g} s", f"{address}, POSTGRES_POOL_TIMEOUT"
        return _reason(exc), address


def is_outage(exc: BaseException) -> bool:
    """Errors that mean the database cannot serve us now (connection lost or refused, server shutting
    down, statement timeout, out of connections or disk, read-only after a failover), not a bad request."""
    import asyncpg

    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc) or "closing" in str(exc)
    return isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError
                      | asyncpg.exceptions.OperatorInterventionError | asyncpg.exceptions.InsufficientResourcesError
                      | asyncpg.ReadOnlySQLTransactionError)


def is_connection_lost(exc: BaseException) -> bool:
    """The connection died under a statement (a server restart, ``pg_terminate_backend``, a reset): one
    retry on a new connection is worth it. Not a refused connection or a timeout: the server is down."""
    import asyncpg

    if isinstance(exc, asyncpg.InterfaceError):
        return "connection is closed" in str(exc)
    if isinstance(exc, asyncpg.InternalClientError):
        # The server's farewell (57P01) arrived while the connection was idle and asyncpg is still
        # consuming it: the next statement is refused before it is sent.
        return "another operation" in str(exc)
    return isinstance(exc, asyncpg.ConnectionDoesNotExistError | asyncpg.ConnectionFailureError
                      | asyncpg.AdminShutdownError | ConnectionResetError | BrokenPipeError)


def describe_target(dsn: str) -> str:
    """``host:port/database`` of a PostgreSQL URL (several hosts as written), never its user information."""
    parts = urlsplit(dsn)
    query = _url_query(dsn)
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        hosts = query.get("host", "localhost")
        if not hosts.startswith("/"):
            hosts = f"{hosts}:{query.get('port', '5432')}"
    elif "," not in hosts and not re.search(r":\d*$", hosts):
        hosts = f"{hosts}:{query.get('port', '5432')}"
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", "")
    return f"{hosts}/{database}" if database else hosts


def _url_query(dsn: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(dsn).query).items()}


def _url_password(dsn: str) -> str | None:
    userinfo, at, _ = urlsplit(dsn).netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return userinfo.partition(":")[2]


def _is_ssl_refusal(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError) and "ssl" in str(exc).lower()


def _reason(exc: BaseException) -> str:
    """A short reason: ``connection refused`` rather than asyncpg's list of attempts."""
    refused = exc.errno == errno.ECONNREFUSED or f"[Errno {errno.ECONNREFUSED}]" in str(exc) \
        if isinstance(exc, OSError) else False
    if refused:  # asyncpg lists one failed attempt per address of the host
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc).strip() or type(exc).__name__
