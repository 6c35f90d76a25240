"""The dashboard's HTTP side: static page with a strict CSP, token and Host checks, TLS, the
event stream (snapshot, updates, end), its limit of pages, and a stalled page that never
slows the run."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fedloom.observe.dashboard import (
    Access,
    DashboardServer,
    LiveState,
    is_loopback,
    run_info,
    split_address,
)


def live(rounds: int = 3, **kw) -> LiveState:
    s = LiveState(run_info({"name": "srv", "rounds": rounds}, name="srv", rounds=rounds), **kw)
    s.started(0)
    return s


def get(url: str, headers: dict[str, str] | None = None, context=None):
    request = urllib.request.Request(url, headers=headers or {})
    return urllib.request.urlopen(request, timeout=10, context=context)


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        return get(url, headers).status
    except urllib.error.HTTPError as e:
        return e.code


def events(response, n: int) -> list[tuple[str, dict]]:
    """The next ``n`` events of an SSE response as (name, data)."""
    out: list[tuple[str, dict]] = []
    name = None
    while len(out) < n:
        line = response.readline().decode()
        if not line:
            break
        if line.startswith("event: "):
            name = line[7:].strip()
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
    return out


def test_the_page_and_its_assets_are_served_with_a_strict_policy() -> None:
    with DashboardServer(live()) as server:
        page = get(server.url)
        assert b'<script src="app.js"' in page.read()
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["Referrer-Policy"] == "no-referrer"
        for asset in ("app.js", "style.css", "favicon.svg"):
            assert get(server.url + asset).status == 200
        assert status_of(server.url + "nothing") == 404
        assert status_of(server.url + "favicon.ico") == 204
        assert b"http" not in get(server.url + "app.js").read().split(b"SVG =")[0]  # no CDN


def test_a_token_is_required_for_the_data_and_the_host_is_checked() -> None:
    access = Access("127.0.0.1", token="s3cret")
    with DashboardServer(live(), access=access) as server:
        base = server.url.split("?")[0]
        assert server.url.endswith("?token=s3cret")
        assert status_of(base + "api/state") == 401
        assert status_of(base + "api/state?token=wrong") == 401
        assert status_of(base + "events") == 401
        assert status_of(base + "api/state?token=s3cret") == 200
        assert status_of(base + "api/state", {"Authorization": "Bearer s3cret"}) == 200
        assert status_of(base, {"Host": "evil.example:80"}) == 403  # DNS rebinding
        assert status_of(base, {"Host": f"localhost:{server.port}"}) == 200


def test_access_rules_by_address(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert split_address("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError, match="not host:port"):
        split_address("localhost")
    assert Access.for_address("127.0.0.1").token is None
    remote = Access.for_address("10.1.2.3")
    assert remote.token and len(remote.token) >= 20 and remote.scheme == "http"
    assert Access.for_address("10.1.2.3", token="given").token == "given"
    cert, key = self_signed(tmp_path)
    assert Access.for_address("10.1.2.3", cert=cert, key=key).scheme == "https"
    assert Access.for_address("127.0.0.1", cert=cert, key=key).scheme == "http"


def self_signed(d: Path) -> tuple[str, str]:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=d, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(d / "c.pem"), str(d / "k.pem")


def test_https_with_the_runs_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with DashboardServer(live(), access=Access("127.0.0.1", "tok", context)) as server:
        assert server.url.startswith("https://")
        client = ssl.create_default_context(cafile=cert)
        assert get(server.url.replace("/?", "/api/state?"), context=client).status == 200
        with pytest.raises((ConnectionError, urllib.error.URLError)):  # plain HTTP: refused
            get(server.url.replace("https", "http").replace("/?", "/api/state?"))


def test_the_stream_sends_a_snapshot_then_updates_then_its_end() -> None:
    s = live()
    with DashboardServer(s, min_interval=0.01) as server:
        stream = get(server.url + "events")
        assert stream.headers["Content-Type"] == "text/event-stream"
        [(name, snap)] = events(stream, 1)
        assert name == "snapshot" and snap["run"]["name"] == "srv" and snap["records"] == []
        s.record({"round": 1, "accuracy": 0.25})
        [(name, update)] = events(stream, 1)
        assert name == "update" and update["records"] == [{"round": 1, "accuracy": 0.25}]
        s.finish({"stop_reason": "max_rounds"})
        got = events(stream, 2)
        assert got[0][1]["report"] == {"stop_reason": "max_rounds"} and got[-1][0] == "end"
        assert stream.read() == b"\n"  # the blank line ending it, then closed


def test_pages_beyond_the_limit_are_told_503() -> None:
    """Two pages at most; once one leaves (noticed at the stream's next write) a third may."""
    s = live()
    with DashboardServer(s, max_streams=2, min_interval=0.0) as server:
        open_streams = [get(server.url + "events") for _ in range(2)]
        assert status_of(server.url + "events") == 503
        open_streams[0].close()
        deadline = time.monotonic() + 10
        for i in range(10**6):
            s.state("train", i)  # the left page's stream writes, fails and frees its place
            if server._streams < 2:
                break
            assert time.monotonic() < deadline, "the place of the page that left stays taken"
            time.sleep(0.02)
        third = get(server.url + "events")
        assert events(third, 1)[0][0] == "snapshot"
        third.close()
        open_streams[1].close()


def test_a_page_that_stops_reading_never_slows_the_run() -> None:
    """A page that opens the stream and never reads: its thread blocks in a full socket, the
    run publishes 3,000 rounds of 2 KB records regardless and the state stays bounded."""
    s = live(rounds=10**6, history_limit=100)
    with DashboardServer(s, min_interval=0.0) as server:
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.2)
        t0 = time.perf_counter()
        for r in range(1, 3001):
            s.state("train", r)
            s.client_done()
            s.record({"round": r, "blob": "x" * 2048})
        elapsed = time.perf_counter() - t0
        assert len(s.snapshot()["records"]) == 100
        assert elapsed < 5.0, f"3,000 rounds published in {elapsed:.2f} s"
        stalled.close()
