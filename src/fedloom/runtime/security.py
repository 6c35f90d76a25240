"""TLS for the runtime: a server certificate, optionally mutual TLS with client certificates.

Certificates are files the operator provides (PEM). Tokens travel inside every message and
are checked by the aggregator on every call; TLS keeps them (and the models) private.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


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
