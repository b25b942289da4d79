"""Tests for stages/source.py against a real loopback HTTP server (no internet needed)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from urllib.parse import urlencode
from aiohttp import web

from stages import source
from stages.source import (
    SourceError,
    check_url,
    is_forbidden_address,
    iter_source,
    source_label,
)
from tests.httpserver import stop_loop_thread

# Unclosed sessions, sockets or loops show up as warnings: make them fail the test.
pytestmark = [pytest.mark.filterwarnings("error"), pytest.mark.timeout(60)]

DATA = bytes(range(256)) * 800  # 204800 bytes with a pattern, so order errors show
SLOW_PIECE = 32 * 1024
SLOW_PIECES = 8
SLOW_DELAY = 0.12  # seconds between pieces: ~1 s in all


def _fixed(body: bytes, status: int = 200):
    async def handler(request):
        return web.Response(body=body, status=status)

    return handler


class _Server:
    """An aiohttp.web app on 127.0.0.1 and 127.0.0.2 (same port), run in a thread.

    ``requests`` lists (local address, path) of every request that reached a handler.
    """

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.requests: list[tuple[str, str]] = []
        self.slow_done = threading.Event()

    def start(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self):
        stop_loop_thread(self.loop, self.thread, self._stop)

    def url(self, path, host="127.0.0.1"):
        return f"http://{host}:{self.port}{path}"

    def count(self, host=None):
        return sum(1 for h, _ in self.requests if host is None or h == host)

    @web.middleware
    async def _record(self, request, handler):
        self.requests.append(
            (request.transport.get_extra_info("sockname")[0], request.path)
        )
        return await handler(request)

    async def _start(self):
        self.stopping = asyncio.Event()
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/file", _fixed(DATA))
        app.router.add_get("/empty", _fixed(b""))
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/stall", self._stall)
        app.router.add_get("/trickle", self._trickle)
        app.router.add_get("/big", _fixed(b"x" * 100_000))
        app.router.add_get("/chunked-big", self._chunked_big)
        app.router.add_get("/missing", _fixed(b"", status=404))
        app.router.add_get("/redirect/{n}", self._redirect)
        app.router.add_get("/redirect-to", self._redirect_to)
        app.router.add_get("/redirect-raw", self._redirect_raw)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        await web.TCPSite(self.runner, "127.0.0.2", self.port).start()

    async def _stop(self):
        self.stopping.set()
        await self.runner.cleanup()

    async def _slow(self, request):
        resp = web.StreamResponse()  # chunked: the client cannot know the size
        await resp.prepare(request)
        for i in range(SLOW_PIECES):
            if i:
                await asyncio.sleep(SLOW_DELAY)
            await resp.write(DATA[i * SLOW_PIECE : (i + 1) * SLOW_PIECE])
        self.slow_done.set()
        await resp.write_eof()
        return resp

    async def _stall(self, request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(DATA[:1000])
        try:
            await asyncio.wait_for(self.stopping.wait(), 5)
        except asyncio.TimeoutError:
            pass
        return resp

    async def _trickle(self, request):
        # Ten bytes every 50 ms: never silent long enough for a read timeout.
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(200):
            if self.stopping.is_set():
                break
            await resp.write(b"z" * 10)
            await asyncio.sleep(0.05)
        return resp

    async def _chunked_big(self, request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"y" * 10_000)
        await resp.write_eof()
        return resp

    async def _redirect(self, request):
        n = int(request.match_info["n"])
        # Relative Location: the client must resolve it against the current URL.
        raise web.HTTPFound("/file" if n <= 1 else f"/redirect/{n - 1}")

    async def _redirect_to(self, request):
        raise web.HTTPFound(request.query["url"])

    async def _redirect_raw(self, request):  # a Location header as given, not checked
        return web.Response(status=302, headers={"Location": request.query["location"]})


@pytest.fixture(scope="module")
def server():
    srv = _Server()
    srv.start()
    yield srv
    srv.stop()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- URLs ---------------------------------------------------------------------------


def test_download_whole_file(server):
    blocks = list(iter_source(server.url("/file"), block_size=50_000))
    assert b"".join(blocks) == DATA
    assert all(1 <= len(b) <= 50_000 for b in blocks)


def test_download_streams_blocks_as_they_arrive(server):
    server.slow_done.clear()
    blocks = []
    gen = iter_source(server.url("/slow"), block_size=16 * 1024)
    first = next(gen)
    # The server is still sleeping between pieces: the body was not buffered whole.
    assert not server.slow_done.is_set()
    blocks = [first, *gen]
    assert server.slow_done.is_set()
    assert b"".join(blocks) == DATA[: SLOW_PIECE * SLOW_PIECES]
    assert max(len(b) for b in blocks) <= 16 * 1024


def test_empty_body_is_not_an_error(server):
    assert list(iter_source(server.url("/empty"))) == []


def test_http_error_names_status_and_url(server):
    with pytest.raises(SourceError) as e:
        list(iter_source(server.url("/missing") + "?token=secret"))
    msg = str(e.value)
    assert msg == f"cannot download {server.url('/missing')}?...: HTTP 404 Not Found"
    assert "secret" not in msg


def test_redirects_within_limit(server):
    before = server.count()
    assert b"".join(iter_source(server.url("/redirect/5"), max_redirects=5)) == DATA
    assert server.count() - before == 6  # every hop was requested by us, one at a time


def test_redirects_beyond_limit(server):
    with pytest.raises(SourceError, match=r"too many redirects \(more than 5\)"):
        list(iter_source(server.url("/redirect/6"), max_redirects=5))
    with pytest.raises(SourceError, match="too many redirects"):
        list(iter_source(server.url("/redirect/1"), max_redirects=0))


def test_stall_timeout(server):
    t0 = time.monotonic()
    got = []
    with pytest.raises(SourceError) as e:
        for block in iter_source(server.url("/stall"), stall_timeout=0.5):
            got.append(block)
    assert time.monotonic() - t0 < 3
    assert b"".join(got) == DATA[:1000]
    assert (
        str(e.value) == f"cannot download {server.url('/stall')}: stalled, no data for 0.5 s"
    )


def test_a_download_that_trickles_is_as_stuck_as_one_that_stalls(server):
    t0 = time.monotonic()
    with pytest.raises(SourceError) as e:
        for _ in iter_source(server.url("/trickle"), stall_timeout=0.5):
            pass
    assert time.monotonic() - t0 < 3  # the trickle would go on for 10 s
    assert str(e.value).startswith(f"cannot download {server.url('/trickle')}: too slow, ")
    assert str(e.value).endswith("(at least 64 KiB every 0.5 s)")


def test_time_the_pipeline_holds_a_block_is_not_the_servers_slowness(server):
    # A consumer slower than the stall timeout (a full ring) with small blocks: only the
    # time spent waiting for the server counts, and that is short.
    got = []
    for block in iter_source(server.url("/chunked-big"), stall_timeout=0.5, block_size=4096):
        got.append(block)
        time.sleep(0.1)
    assert sum(map(len, got)) == 100_000 and len(got) >= 20


@pytest.mark.parametrize("location", ["http://[bad/x.wav", "http://example.com:99999/x.wav"])
def test_a_redirect_to_an_invalid_url_is_the_servers_fault_in_one_line(server, location):
    # It was "source stage failed: Invalid IPv6 URL", which reads as our crash.
    url = server.url("/redirect-raw?" + urlencode({"location": location}))
    with pytest.raises(SourceError) as e:
        list(iter_source(url))
    assert str(e.value).startswith(f"cannot download {source_label(url)}: HTTP 302 redirect to an invalid URL ("), str(e.value)


def test_connection_refused():
    url = f"http://127.0.0.1:{_closed_port()}/a.mp3"
    t0 = time.monotonic()
    with pytest.raises(
        SourceError, match=r"^cannot download http://127\.0\.0\.1:\d+/a\.mp3: "
    ):
        list(iter_source(url, connect_timeout=2))
    assert time.monotonic() - t0 < 3


def test_max_bytes_by_content_length(server):
    gen = iter_source(server.url("/big"), max_bytes=1000)
    with pytest.raises(
        SourceError, match="100000 bytes is over the limit of 1000 bytes"
    ):
        next(gen)  # refused before any block is handed out


def test_max_bytes_by_counting(server):
    got = []
    with pytest.raises(SourceError, match="more than the limit of 25000 bytes"):
        for block in iter_source(
            server.url("/chunked-big"), max_bytes=25_000, block_size=5000
        ):
            got.append(block)
    assert sum(map(len, got)) <= 25_000
    assert (
        b"".join(iter_source(server.url("/chunked-big"), max_bytes=100_000))
        == b"y" * 100_000
    )


def test_closing_early_is_clean(server):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = threading.active_count()
        gen = iter_source(server.url("/slow"), block_size=1024)
        assert len(next(gen)) <= 1024
        gen.close()
        del gen
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert threading.active_count() <= threads  # the loop's executor threads are joined


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.mp3", "gopher://x/"]
)
def test_other_schemes_refused(url):
    with pytest.raises(
        SourceError, match=r"unsupported URL scheme .* \(only http and https are allowed\)"
    ):
        list(iter_source(url))


def test_redirect_to_file_scheme_refused(server):
    url = server.url("/redirect-to?url=file:///etc/passwd")
    with pytest.raises(
        SourceError, match=r"redirect refused: unsupported URL scheme 'file'"
    ):
        list(iter_source(url))


# --- private addresses ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.2"])
def test_private_hosts_refused_before_any_request(server, host):
    before = server.count()
    url = f"http://{host}:{server.port}/file"
    with pytest.raises(SourceError, match=r"^refusing to download .*loopback"):
        list(iter_source(url, allow_private=False))
    assert server.count() == before
    if (
        host != "[::1]"
    ):  # control: the same URL is served when private hosts are allowed
        assert b"".join(iter_source(url)) == DATA


def test_resolver_connects_when_address_allowed(server, monkeypatch):
    # Control for the DNS test above: with the predicate allowing loopback, the guarded
    # resolver path (allow_private=False) does fetch from "localhost".
    monkeypatch.setattr(source, "is_forbidden_address", lambda address: False)
    assert (
        b"".join(iter_source(server.url("/file", "localhost"), allow_private=False))
        == DATA
    )


def test_redirect_to_private_address_refused(server, monkeypatch):
    # Pretend only 127.0.0.2 is private, so 127.0.0.1 plays the public first hop.
    monkeypatch.setattr(source, "is_forbidden_address", lambda a: a == "127.0.0.2")
    target = server.url("/file", "127.0.0.2")
    url = server.url(f"/redirect-to?url={target}")
    before_private, before_public = server.count("127.0.0.2"), server.count("127.0.0.1")
    with pytest.raises(SourceError) as e:
        list(iter_source(url, allow_private=False))
    assert str(e.value).startswith(
        f"cannot download {server.url('/redirect-to')}?...: redirect"
    )
    assert "127.0.0.2" in str(e.value)
    assert server.count("127.0.0.1") == before_public + 1  # the first hop was fetched
    assert server.count("127.0.0.2") == before_private  # the private one never was
    # Control: the redirect target is reachable when private addresses are allowed.
    assert b"".join(iter_source(url)) == DATA
    assert server.count("127.0.0.2") == before_private + 1


def test_guarded_resolver_filters_rebinding_answers():
    def answer(*hosts):
        return [{"hostname": "evil.test", "host": h, "port": 80} for h in hosts]

    class FakeResolver:
        def __init__(self):
            self.answers = [
                answer("93.184.216.34", "127.0.0.1"),
                answer("169.254.169.254"),
            ]

        async def resolve(self, host, port, family):
            return self.answers.pop(0)

        async def close(self):
            pass

    async def run():
        guard = source._GuardedResolver(is_forbidden_address)
        await guard.close()
        guard._inner = FakeResolver()
        first = await guard.resolve("evil.test", 80)
        with pytest.raises(OSError, match="evil.test resolves to 169.254.169.254"):
            await guard.resolve("evil.test", 80)
        return first, guard.refused

    first, refused = asyncio.run(run())
    assert [r["host"] for r in first] == ["93.184.216.34"]
    assert "cloud-metadata" in refused


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "0.0.0.0",
        "169.254.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1%eth0",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "not-an-ip",
    ],
)
def test_forbidden_addresses(address):
    assert is_forbidden_address(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"]
)
def test_public_addresses_allowed(address):
    assert not is_forbidden_address(address)


@pytest.mark.parametrize(
    "url, kind",
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
        ("http://[fd00:ec2::254]/latest/", "cloud-metadata"),
        ("http://100.100.100.200/latest/meta-data/", "cloud-metadata"),
        ("https://10.0.0.5/a.mp3", "private"),
        ("http://[::ffff:7f00:1]/", "loopback"),
    ],
)
def test_check_url_refuses_literal_private_ips(url, kind):
    with pytest.raises(
        SourceError, match=f"refusing to download .* is a {kind} address"
    ):
        check_url(url, allow_private=False)
    check_url(url, allow_private=True)  # only refused on request


def test_check_url_allows_public():
    assert (
        check_url("https://example.com/a.mp3", allow_private=False).host
        == "example.com"
    )
    assert check_url("http://8.8.8.8/a.mp3", allow_private=False).host == "8.8.8.8"


def test_source_label():
    assert (
        source_label("https://u:pw@host:8080/a.mp3?sig=abc#f")
        == "https://host:8080/a.mp3?..."
    )
    assert source_label("http://host/a b.mp3") == "http://host/a%20b.mp3"
    assert source_label("/x/y.wav") == "/x/y.wav"
    assert source_label(Path("rel/y.wav")) == "rel/y.wav"
    assert source_label("-") == "<stdin>"
    assert source_label(b"abc") == "in-memory data (3 bytes)"


# --- files, stdin, bytes -----------------------------------------------------------


def test_local_file(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(DATA)
    blocks = list(iter_source(str(p), block_size=30_000))
    assert b"".join(blocks) == DATA
    assert all(1 <= len(b) <= 30_000 for b in blocks)
    assert b"".join(iter_source(p)) == DATA  # PathLike too


def test_empty_file_yields_nothing(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    assert list(iter_source(str(p))) == []


def test_missing_file(tmp_path):
    p = tmp_path / "nope" / "y.wav"
    with pytest.raises(SourceError) as e:
        list(iter_source(str(p)))
    assert str(e.value) == f"no such file: {p}"


def test_directory(tmp_path):
    with pytest.raises(SourceError, match=f"is a directory, not a file: {tmp_path}$"):
        list(iter_source(str(tmp_path)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    p = tmp_path / "secret.wav"
    p.write_bytes(b"x")
    p.chmod(0)
    with pytest.raises(SourceError, match=f"cannot read {p}: permission denied"):
        list(iter_source(str(p)))


def test_file_max_bytes(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(DATA)
    with pytest.raises(SourceError, match="over the limit of 1000 bytes"):
        list(iter_source(str(p), max_bytes=1000, block_size=500))


def test_stdin_from_pipe_fd():
    r, w = os.pipe()

    def write():
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(DATA), 10_000):
                f.write(DATA[i : i + 10_000])
                f.flush()

    t = threading.Thread(target=write)
    t.start()
    try:
        blocks = list(iter_source("-", stdin_fd=r, block_size=4096))
    finally:
        t.join()
        os.close(r)
    assert b"".join(blocks) == DATA
    assert all(1 <= len(b) <= 4096 for b in blocks)


def test_stdin_default_fd_0():
    code = (
        "from stages.source import iter_source; print(sum(map(len, iter_source('-'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=DATA,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == str(len(DATA)).encode()


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_input(kind):
    blocks = list(iter_source(kind(DATA), block_size=7000))
    assert b"".join(blocks) == DATA
    assert all(isinstance(b, bytes) and 1 <= len(b) <= 7000 for b in blocks)
    assert list(iter_source(kind(b""))) == []
