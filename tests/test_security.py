"""Rate limits, CORS and TLS on the HTTP services, on real sockets: real preflights, real handshakes."""

from __future__ import annotations

import datetime
import ssl

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentrunner.testing.platform import http_client, running_platform
from agentrunner.web.server import start_services

API_KEY = "s" * 40


# --- Rate limits ---------------------------------------------------------------------------------


async def test_each_key_has_its_own_bucket_and_the_excess_gets_429(tmp_path):
    environ = {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_BURST": "3", "RATE_LIMIT_PER_MINUTE": "6",
               "API_AUTH_ENABLED": "true", "API_KEY": f"{API_KEY},{'t' * 40}"}
    async with running_platform(tmp_path, environ) as platform, http_client(platform) as client:
        first = {"X-API-Key": API_KEY}
        statuses = [(await client.get("/agents", headers=first)).status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await client.get("/agents", headers=first)
        body = await limited.json()
        assert limited.status == 429 and limited.headers["Retry-After"] == "10"  # 60 s / 6 a minute
        assert body["error"]["code"] == "rate_limited" and "RATE_LIMIT_BURST" in body["error"]["message"]
        assert (await client.get("/agents", headers={"X-API-Key": "t" * 40})).status == 200  # another key
        assert (await client.get("/health")).status == 200  # never limited
        # bad keys are limited too (by address): a brute force cannot go fast
        wrong = [(await client.get("/agents", headers={"X-API-Key": "nope"})).status for _ in range(5)]
        assert wrong.count(401) == 3 and wrong.count(429) == 2


# --- CORS ---------------------------------------------------------------------------------------


async def test_allowed_origins_pass_the_preflight_and_others_do_not(tmp_path):
    environ = {"CORS_ENABLED": "true", "CORS_ORIGINS": '["https://app.example.com"]',
               "CORS_METHODS": "GET,POST", "CORS_HEADERS": "Content-Type", "API_KEY_HEADER": "X-Team-Key"}
    async with running_platform(tmp_path, environ) as platform, http_client(platform) as client:
        preflight = await client.options("/agents/any/tasks", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, X-Team-Key"})
        assert preflight.status == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"content-type", "x-team-key"} <= allowed  # the API key header is always admitted
        response = await client.get("/agents", headers={"Origin": "https://app.example.com"})
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        evil = await client.options("/agents/any/tasks", headers={
            "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
        assert evil.status == 403 and "Access-Control-Allow-Origin" not in evil.headers
        response = await client.get("/agents", headers={"Origin": "https://evil.example.com"})
        assert "Access-Control-Allow-Origin" not in response.headers
        delete = await client.options("/executions/x/cancel", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "DELETE"})
        assert delete.status == 403  # not in CORS_METHODS


# --- TLS ----------------------------------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(subject: str, issuer_key, issuer: str, key, *, ca: bool = False, server: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path):
    """A CA, a server certificate for localhost and a client certificate, all signed by the CA."""
    def write(name, cert, key):
        (tmp_path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, "test CA", ca_key, ca=True)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, _certificate(name, ca_key, "test CA", key, server=server), key)
    write("ca", ca, ca_key)
    return tmp_path


def _client_context(pki, *, certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if certificate:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    return context


async def _status(url: str, context: ssl.SSLContext) -> int:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        return response.status


async def test_every_port_speaks_tls_and_client_certificates_are_required_but_on_the_webhook(tmp_path, pki):
    environ = {"TLS_ENABLED": "true", "TLS_CERT_PATH": str(pki / "server.crt"),
               "TLS_KEY_PATH": str(pki / "server.key"), "TLS_CA_PATH": str(pki / "ca.crt"),
               "TLS_MIN_VERSION": "TLSv1.3", "BIND_HOST": "127.0.0.1"}
    async with running_platform(tmp_path, environ) as platform:
        runner = await start_services(platform, ["orchestrator", "gateway"], ports={"orchestrator": 0, "gateway": 0})
        try:
            urls = dict(runner.urls)
            assert all(url.startswith("https://") for url in urls.values())
            orchestrator = urls["AgentOrchestrator"].replace("127.0.0.1", "localhost")
            gateway = urls["SlackGateway"].replace("127.0.0.1", "localhost")
            assert await _status(f"{orchestrator}/health", _client_context(pki, certificate=True)) == 200
            with pytest.raises(aiohttp.ClientError):  # no client certificate: the handshake fails
                await _status(f"{orchestrator}/health", _client_context(pki, certificate=False))
            assert await _status(f"{gateway}/health", _client_context(pki, certificate=False)) == 200
            old = _client_context(pki, certificate=True)
            old.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(aiohttp.ClientError):  # below TLS_MIN_VERSION
                await _status(f"{orchestrator}/health", old)
            with pytest.raises(aiohttp.ClientError):  # plain HTTP on a TLS port gets nothing
                async with aiohttp.ClientSession() as session:
                    await session.get(orchestrator.replace("https://", "http://") + "/health")
        finally:
            await runner.close()


async def test_a_certificate_that_cannot_be_loaded_names_the_variable(tmp_path):
    from agentrunner.runtime import PlatformError

    environ = {"TLS_ENABLED": "true", "TLS_CERT_PATH": str(tmp_path / "missing.crt"),
               "TLS_KEY_PATH": str(tmp_path / "missing.key")}
    async with running_platform(tmp_path, environ) as platform:
        with pytest.raises(PlatformError, match="TLS_CERT_PATH / TLS_KEY_PATH: cannot load the certificate"):
            await start_services(platform, ["state"], ports={"state": 0})
