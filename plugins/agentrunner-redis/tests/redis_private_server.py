"""A redis-server of a test's own, for what cannot be done to the shared one.

A password (``requirepass``), TLS, a server that refuses ``CONFIG``, fewer
databases or a memory limit would disturb the other test runs sharing the
server, so those tests start ``redis-server`` on a free port (skipped when the
binary, or for TLS ``openssl``, is not installed) and stop it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_certificate(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` and 127.0.0.1, and its key: ``(cert.pem, key.pem)``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: this test needs a certificate")
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@contextlib.asynccontextmanager
async def private_redis(*arguments: str, password: str | None = None,
                        tls: tuple[Path, Path] | None = None) -> AsyncIterator[int]:
    """Run ``redis-server`` on 127.0.0.1 with ``arguments`` (TLS only, with ``tls=(cert, key)``); yields its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: this test needs a Redis server of its own")
    import redis.asyncio

    port = free_port()
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *arguments]
    client_options: dict[str, object] = {"port": port, "password": password, "socket_connect_timeout": 1}
    if tls is None:
        options += ["--port", str(port)]
    else:
        cert, key = tls
        options += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                    "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        client_options.update(ssl=True, ssl_ca_certs=str(cert))
    if password is not None:
        options += ["--requirepass", password]
    process = await asyncio.create_subprocess_exec(binary, *options, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL)
    try:
        client = redis.asyncio.Redis(**client_options)
        try:
            for _ in range(100):
                if process.returncode is not None:
                    if tls is not None:
                        pytest.skip("this redis-server was built without TLS support")
                    raise RuntimeError(f"redis-server {' '.join(options)} exited with {process.returncode}")
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    if await client.ping():
                        break
                await asyncio.sleep(0.02)
            else:
                raise RuntimeError(f"redis-server {' '.join(options)} did not start on port {port}")
        finally:
            await client.aclose()
        yield port
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
