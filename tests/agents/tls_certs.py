"""Certificates made in the test: a private CA, a server certificate for 127.0.0.1 signed by
it, a client certificate (mutual TLS), and a self-signed server certificate; and an aiohttp
server on a thread of its own (for runs whose agents share the test's process)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool, usage, san: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Certs:
    ca_pem: str
    server_pem: str  # signed by the CA
    server_key_pem: str
    client_pem: str  # signed by the CA, for mutual TLS
    client_key_pem: str
    self_signed_pem: str  # a server certificate that is its own CA
    self_signed_key_pem: str

    def write(self, folder: Path) -> dict[str, Path]:
        out = {}
        for name in ("ca", "server", "server_key", "client", "client_key", "self_signed", "self_signed_key"):
            path = folder / f"{name}.pem"
            path.write_text(getattr(self, f"{name}_pem"))
            out[name] = path
        return out

    def server_context(self, *, require_client_cert: bool = False, self_signed: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        folder = Path(_tmpdir())
        paths = self.write(folder)
        if self_signed:
            ctx.load_cert_chain(paths["self_signed"], paths["self_signed_key"])
        else:
            ctx.load_cert_chain(paths["server"], paths["server_key"])
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=self.ca_pem)
        return ctx


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="horde-test-certs-")


def make_certs() -> Certs:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "horde test CA")])
    ca = _cert("horde test CA", ca_key, ca_name, ca_key, ca=True, usage=None, san=False)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("127.0.0.1", server_key, ca_name, ca_key, ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH, san=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("client", client_key, ca_name, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH, san=False)
    self_key = ec.generate_private_key(ec.SECP256R1())
    self_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    self_signed = _cert("127.0.0.1", self_key, self_name, self_key, ca=True, usage=None, san=True)
    return Certs(
        ca_pem=_pem(ca),
        server_pem=_pem(server),
        server_key_pem=_key_pem(server_key),
        client_pem=_pem(client),
        client_key_pem=_key_pem(client_key),
        self_signed_pem=_pem(self_signed),
        self_signed_key_pem=_key_pem(self_key),
    )


@contextlib.contextmanager
def serve_in_thread(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 from a thread with its own loop; yields the base URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def start() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        box["runner"] = runner
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        box["url"] = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(box["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(10), "test server did not start"
    try:
        yield box["url"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
