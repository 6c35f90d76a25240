"""Notifications when a run ends or fails: a generic JSON webhook and Telegram.

Stdlib ``urllib`` only, so notifying adds no dependency. Webhook and bot URLs carry secrets
(the bot token, Slack-style webhook paths), so errors name only scheme and host, never the URL.
:func:`notify_all` logs failures instead of raising: a broken notifier must not end training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..errors import NotifyError as NotifyError  # its published home

log = logging.getLogger("fedloom")
TELEGRAM_MAX_TEXT = 4096  # Bot API limit on sendMessage text


class Notifier(Protocol):
    """Anything that can deliver a short message."""

    def send(self, title: str, text: str) -> None: ...


def _post_json(
    url: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, str] | None,
    timeout: float,
    proxy: str | None,
    what: str,
) -> bytes:
    """POST ``payload`` as JSON; returns the body or raises NotifyError naming only the host."""
    import urllib.error  # here, not at module level: only a notifying run pays for it
    import urllib.request

    parts = urlsplit(url)
    where = f"{what} at {parts.scheme}://{parts.hostname}"
    if parts.scheme not in ("http", "https"):  # urllib would also open file:// and ftp://
        raise NotifyError(f"{where}: only http(s) URLs are supported")
    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy})] if proxy else []
    opener = urllib.request.build_opener(*handlers)  # no proxy given: environment proxies
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with opener.open(req, timeout=timeout) as resp:
            answer: bytes = resp.read()
            return answer
    except urllib.error.HTTPError as e:
        body = e.read()[:500].decode("utf-8", "replace")
        raise NotifyError(f"{where}: HTTP {e.code} {e.reason}: {body}".rstrip(": ")) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NotifyError(f"{where}: {type(e).__name__}: {reason}") from None


class WebhookNotifier:
    """POSTs ``{"title", "text", "event"}`` as JSON to ``url`` (Slack/Discord relays, ntfy...)."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10,
        proxy: str | None = None,
    ) -> None:
        self.url, self.headers, self.timeout, self.proxy = url, dict(headers or {}), timeout, proxy

    def send(self, title: str, text: str, event: str = "message") -> None:
        """Deliver; ``event`` (e.g. "finished", "failed") lets the receiver route messages."""
        payload = {"title": title, "text": text, "event": event}
        _post_json(self.url, payload, self.headers, self.timeout, self.proxy, "webhook")

    def __repr__(self) -> str:
        return f"WebhookNotifier(host={urlsplit(self.url).hostname!r})"


class TelegramNotifier:
    """Sends via the Telegram Bot API ``sendMessage``; ``proxy`` is an http(s) proxy URL."""

    def __init__(
        self,
        token: str,
        chat_id: int | str,
        api_base: str = "https://api.telegram.org",
        timeout: float = 10,
        proxy: str | None = None,
    ) -> None:
        self._token, self.chat_id, self.api_base = token, chat_id, api_base.rstrip("/")
        self.timeout, self.proxy = timeout, proxy

    def send(self, title: str, text: str, event: str = "message") -> None:
        """Deliver ``title`` and ``text`` as one message; raises NotifyError unless ``ok``."""
        message = f"{title}\n\n{text}" if title else text
        payload = {"chat_id": self.chat_id, "text": message[:TELEGRAM_MAX_TEXT]}
        url = f"{self.api_base}/bot{self._token}/sendMessage"
        try:
            body = _post_json(url, payload, None, self.timeout, self.proxy, "Telegram")
        except NotifyError as e:  # belt and braces: the token must never reach a log
            msg = str(e).replace(self._token, "***") if self._token else str(e)
            raise NotifyError(msg) from None
        try:
            reply = json.loads(body)
        except ValueError:
            raise NotifyError(f"Telegram sendMessage: reply is not JSON: {body[:200]!r}") from None
        if not (isinstance(reply, dict) and reply.get("ok") is True):
            desc = reply.get("description", reply) if isinstance(reply, dict) else reply
            raise NotifyError(f"Telegram sendMessage refused: {desc}")

    def __repr__(self) -> str:
        return f"TelegramNotifier(chat_id={self.chat_id!r}, token=***)"


def notify_all(
    notifiers: Iterable[Notifier], title: str, text: str, event: str | None = None
) -> int:
    """Send to every notifier, logging (not raising) failures; returns how many succeeded.

    ``event`` is passed as ``send(..., event=event)`` only when given, so plain notifiers with
    ``send(title, text)`` keep working when it is left out.
    """
    ok = 0
    for n in notifiers:
        try:
            if event is None:
                n.send(title, text)
            else:
                n.send(title, text, event=event)  # type: ignore[call-arg]
            ok += 1
        except Exception as e:  # noqa: BLE001 - a notifier must never kill the run
            log.warning("notification via %r failed: %s", n, e)
    return ok
