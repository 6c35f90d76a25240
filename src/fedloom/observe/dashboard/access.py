"""Who may read the dashboard: loopback freely; any other address with a token (and TLS
when the run has certificates).

A page on loopback still checks the ``Host`` header, so a web site that rebinds its own name
to 127.0.0.1 cannot read the run from the operator's browser (DNS rebinding).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("fedloom.dashboard")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) into its parts; ValueError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"dashboard address {text!r} is not host:port (port 0..65535)")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Access:
    """The rules one dashboard enforces.

    Args:
        host: the address it binds.
        token: required on every data request (``?token=`` or ``Authorization: Bearer``);
            None only on loopback.
        ssl_context: serve HTTPS with it (None: plain HTTP).
    """

    host: str
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def for_address(
        cls, host: str, token: str | None = None, cert: str | None = None, key: str | None = None
    ) -> Access:
        """Loopback as given; elsewhere a token (one is made when none is given) and, when
        ``cert`` and ``key`` are there, TLS."""
        context = None
        if not is_loopback(host):
            token = token or secrets.token_urlsafe(18)
            if cert and key:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(cert, key)
            else:
                log.warning(
                    "the dashboard on %s is plain HTTP: its token crosses the network in the "
                    "clear (give the run runtime.tls_cert and runtime.tls_key for HTTPS)",
                    host,
                )
        return cls(host, token, context)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def host_allowed(self, header: str | None) -> bool:
        """On loopback, the ``Host`` a browser sends must name loopback (or the bound host)."""
        if not is_loopback(self.host) or header is None:
            return True
        name = urlsplit(f"//{header}").hostname or ""
        return name in LOOPBACK_NAMES or name == self.host or is_loopback(name)

    def token_ok(self, path: str, authorization: str | None) -> bool:
        """The request carries the token (always true when none is required)."""
        if self.token is None:
            return True
        given = parse_qs(urlsplit(path).query).get("token", [""])[0]
        if authorization and authorization.startswith("Bearer "):
            given = authorization.removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), self.token.encode())
