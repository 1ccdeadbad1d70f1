"""TLS contexts for every engine of an agent, from the scenario's `tls` (agents/spec.TlsSpec).

    tls: {verify: false}                       # no verification at all (the summary warns)
    tls: {ca: certs/ca.pem}                    # trust this private CA (instead of the system's)
    tls: {cert: certs/client.pem, key: certs/client.key}   # a client certificate (mutual TLS)

The coordinator reads the files and ships their PEM text (nodes may not have them). Python's
ssl module loads a CA from memory but a client key only from a file: the key goes through a
temporary file that only this process can read and that is removed at once.

A handshake that fails verification (an unknown CA, a name mismatch, an expired certificate)
is error class `tls` in both engines (`is_tls_error`), not `connect`: the service answered,
horde refused to trust it.
"""

from __future__ import annotations

import os
import ssl
import tempfile

from horde.agents.spec import DEFAULT_TLS, TlsSpec


def make_ssl_context(tls: TlsSpec) -> ssl.SSLContext:
    """A client context for `tls` (the same one for the lean engine, aiohttp and flows)."""
    if tls.verify:
        ctx = ssl.create_default_context(cadata=tls.ca_pem) if tls.ca_pem else ssl.create_default_context()
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_pem:
        _load_client_cert(ctx, tls.cert_pem, tls.key_pem)
    return ctx


def is_default(tls: TlsSpec) -> bool:
    return tls == DEFAULT_TLS


def _load_client_cert(ctx: ssl.SSLContext, cert_pem: str, key_pem: str | None) -> None:
    # mkstemp: mode 0600, a fresh name; the files live only for the load_cert_chain call.
    paths: list[str] = []
    try:
        for text in (cert_pem, key_pem):
            if text is None:
                continue
            fd, path = tempfile.mkstemp(prefix="horde-tls-", suffix=".pem")
            paths.append(path)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        ctx.load_cert_chain(paths[0], paths[1] if len(paths) > 1 else None)
    finally:
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass


def is_tls_error(exc: BaseException | None) -> bool:
    """True for a failed certificate verification or a refused handshake (class `tls`).
    aiohttp's ClientConnectorCertificateError and ClientConnectorSSLError are ssl errors
    too; a wrapped one is found a few causes down."""
    for _ in range(5):
        if exc is None:
            return False
        if isinstance(exc, ssl.SSLError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
