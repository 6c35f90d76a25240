"""TLS for the runtime: a server certificate, optionally mutual TLS with client certificates.

Certificates are files the operator provides (PEM). Tokens travel inside every message and
are checked by the aggregator on every call; TLS keeps them (and the models) private.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ..errors import ConfigError


@dataclass(frozen=True)
class TLSConfig:
    """PEM files. Server side: ``cert`` + ``key`` (+ ``client_ca`` to require client certs).
    Client side: ``ca`` to verify the server (+ ``cert`` + ``key`` for mutual TLS)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    client_ca: str | None = None
    server_name: str | None = None  # override the name checked against the certificate


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"TLS {what} file {p} does not exist")
    return p.read_bytes()


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    if not (tls.cert and tls.key):
        raise ValueError("a TLS server needs both cert and key")
    pair = [(_read(tls.key, "key"), _read(tls.cert, "certificate"))]
    client_ca = _read(tls.client_ca, "client CA")
    return grpc.ssl_server_credentials(
        pair, root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca, "CA"),
        private_key=_read(tls.key, "key"),
        certificate_chain=_read(tls.cert, "certificate"),
    )


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The same certificates for the bulk channel (:mod:`fedloom.runtime.bulk`)."""
    if not (tls.cert and tls.key):
        raise ValueError("a TLS server needs both cert and key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(_path(tls.cert, "certificate"), _path(tls.key, "key"))
    if tls.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(_path(tls.client_ca, "client CA"))
    return ctx


def client_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=_path(tls.ca, "CA") if tls.ca else None)
    if tls.cert and tls.key:
        ctx.load_cert_chain(_path(tls.cert, "certificate"), _path(tls.key, "key"))
    return ctx


def _path(path: str, what: str) -> str:
    _read(path, what)  # the same clear error for a missing file
    return path


# -- from a config's [runtime] section ---------------------------------------------------------
# ``rt`` is :class:`fedloom.config.RuntimeConfig`, read by attribute: the runtime sits below
# the config layer and imports nothing from it.
def _tls_files(rt: Any, *keys: str) -> None:
    """The TLS files this side reads must exist. Checked per role, not in the config: one
    config serves both sides and a client machine need not hold the server's key."""
    for key in keys:
        path = getattr(rt, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"runtime.{key}: no such file {path}")


def server_tls(rt: Any) -> TLSConfig | None:
    """The aggregator's TLS from ``runtime.tls_cert``/``tls_key``/``tls_client_ca``, or None."""
    if not (rt.tls_cert or rt.tls_key):
        if rt.tls_client_ca:
            raise ConfigError("runtime.tls_client_ca needs runtime.tls_cert and runtime.tls_key")
        return None
    if not (rt.tls_cert and rt.tls_key):
        raise ConfigError("runtime.tls_cert and runtime.tls_key go together on the aggregator")
    _tls_files(rt, "tls_cert", "tls_key", "tls_client_ca")
    return TLSConfig(cert=rt.tls_cert, key=rt.tls_key, client_ca=rt.tls_client_ca)


def client_tls(rt: Any) -> TLSConfig | None:
    """A client's TLS from ``runtime.tls_ca`` (+ ``tls_cert``/``tls_key``), or None."""
    if not rt.tls_ca:
        return None
    _tls_files(rt, "tls_ca", "tls_cert", "tls_key")
    return TLSConfig(ca=rt.tls_ca, cert=rt.tls_cert, key=rt.tls_key, server_name=rt.tls_server_name)
