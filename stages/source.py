"""Source stage core: the bytes of one input, from a URL, a local file, stdin or memory.

``iter_source`` is a plain generator of ``bytes`` blocks (each ``1 <= len <= block_size``);
the runtime copies each block into a shared-memory slot for the decode stage. Nothing
here buffers a whole input: downloads are streamed as they arrive, files and pipes are
read in fixed-size reads.

URL safety (the RunPod worker downloads URLs that users send): only http and https, and
with ``allow_private=False`` no private, loopback, link-local, multicast, reserved or
cloud-metadata address is ever connected to, whether it is written literally, reached by
a redirect, or returned by DNS (the check runs inside the resolver the connector uses, so
the address checked is the address connected to and DNS rebinding cannot slip past).
Tests may monkeypatch ``is_forbidden_address`` (looked up at call time) to mark an
otherwise allowed address as private.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Union

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from pipeline.errors import UserError

logger = logging.getLogger(__name__)

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

DEFAULT_BLOCK_SIZE = 256 * 1024  # bytes; one shared-memory slot's worth
# A body must bring at least this much in every stall timeout of waiting for it: a server
# that trickles a byte every few seconds never trips the socket's read timeout, and would
# hold a job (and the worker's slot) for days. 64 KiB in 30 s is 2.2 kB/s, a third of what
# a dial-up modem gave; a whole file smaller than this is never too slow.
MIN_PROGRESS_BYTES = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ALLOWED_SCHEMES = ("http", "https")
STDIN_LABEL = "<stdin>"

# "scheme://..." marks a URL; anything else is a local path (so "C:/x" style never
# occurs on our Linux hosts, and a file literally named "a://b" is not supported).
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

# Cloud metadata endpoints. Most are link-local or private and caught by the generic
# rules too; listing them keeps the refusal explicit even if those rules change
# (Python's ipaddress tables did change in 3.11.x/3.12.x).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, DigitalOcean, OpenStack, Oracle
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud (in 100.64/10, which is_private misses)
        "192.0.0.192",  # Oracle Cloud classic
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class SourceError(UserError):
    """The input could not be read. ``str()`` is one line naming the input."""

    def __init__(self, message: str):
        # One line, always: the CLI prints it after "error: " and the worker returns it.
        super().__init__(" ".join(str(message).split()))


def _address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` must not be contacted from the worker (None: it is a public address)."""
    if ip in METADATA_ADDRESSES:
        return "cloud-metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address reach that IPv4 host: judge that one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _address_kind(embedded)
        if ip.is_site_local:
            return "site-local"
    for kind in (
        "loopback",
        "unspecified",
        "link_local",
        "multicast",
        "reserved",
        "private",
    ):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:
        # e.g. 100.64.0.0/10 (carrier-grade NAT), 192.0.0.0/24, documentation ranges.
        return "non-global"
    return None


def is_forbidden_address(address: str) -> bool:
    """True when ``address`` (an IP literal, IPv6 scope allowed) must not be contacted.

    Unparseable input counts as forbidden: the check fails closed.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    return _address_kind(ip) is not None


def _describe(address: str) -> str:
    try:
        kind = _address_kind(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return "an unparseable address"
    if not kind:
        return "a forbidden address"
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"  # "an unspecified address"


LABEL_MAX = 150  # under errors.TOKEN_MAX, so a label is never cut twice


def _url_label(url: URL) -> str:
    """``url`` without credentials, query or fragment (they may hold secrets: signed URLs)."""
    try:
        bare = url.with_user(None).with_query(None).with_fragment(None)
    except (ValueError, TypeError):
        return "<invalid URL>"
    text = str(bare) + ("?..." if url.raw_query_string or url.raw_fragment else "")
    if len(text) > LABEL_MAX:  # messages and logs echo at most ~200 characters of a request
        text = text[: LABEL_MAX - 43] + "..." + text[-40:]
    return text


def source_label(source: Source) -> str:
    """The display name of ``source`` for messages: a safe URL, the path, or a description.

    >>> source_label("https://u:p@host/a.mp3?sig=secret")
    'https://host/a.mp3?...'
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"in-memory data ({memoryview(source).nbytes} bytes)"
    if isinstance(source, str) and source == "-":
        return STDIN_LABEL
    if isinstance(source, str) and _URL_RE.match(source):
        try:
            return _url_label(URL(source))
        except (ValueError, TypeError):
            # Never echo an unparseable URL: it may still hold credentials.
            return source.split("://", 1)[0] + "://<invalid URL>"
    return os.fspath(source)


def check_url(
    url: str | URL,
    *,
    allow_private: bool = True,
    is_forbidden: Callable[[str], bool] | None = None,
) -> URL:
    """Check one hop before connecting: scheme, host, and (if not allow_private) a literal IP.

    Host names (``localhost`` included) are checked when they are resolved, on the
    addresses DNS returns (see ``_GuardedResolver``), so a name cannot be checked against
    one answer and connected to with another.
    Returns the parsed URL; raises SourceError with a one-line reason.
    """
    if is_forbidden is None:
        is_forbidden = is_forbidden_address
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        host = parsed.host
    except (ValueError, TypeError) as exc:
        raise SourceError(f"invalid URL {source_label(str(url))}: {exc}") from None
    label = _url_label(parsed)
    scheme = (parsed.scheme or "").lower()
    if scheme not in ALLOWED_SCHEMES:
        raise SourceError(
            f"unsupported URL scheme {scheme!r} (only http and https are allowed): {label}"
        )
    if not host:
        raise SourceError(f"invalid URL {label}: no host")
    if not allow_private:
        literal = host.strip("[]")
        try:
            ipaddress.ip_address(literal.split("%", 1)[0])
            is_literal = True
        except ValueError:
            is_literal = False
        if is_literal and is_forbidden(literal):
            raise SourceError(
                f"refusing to download {label}: {literal} is {_describe(literal)}"
            )
    return parsed


class _RefusedAddress(OSError):
    """Raised by the resolver; aiohttp wraps it in ClientConnectorDNSError."""


class _GuardedResolver(AbstractResolver):
    """Wraps aiohttp's default resolver and drops forbidden addresses from its answers.

    The connector connects only to what ``resolve`` returns, so the addresses checked
    here are exactly the addresses connected to (a DNS-rebinding answer is filtered at
    connect time, not merely at some earlier check). Must be built inside a running loop.
    """

    def __init__(self, is_forbidden: Callable[[str], bool]):
        self._inner = aiohttp.DefaultResolver()
        self._is_forbidden = is_forbidden
        self.refused: str | None = None  # the reason, once a host was refused

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not self._is_forbidden(r["host"])]
        if not allowed:
            if results:
                bad = results[0]["host"]
                self.refused = f"{host} resolves to {bad}, {_describe(bad)}"
            else:
                self.refused = f"{host} resolves to no address"
            raise _RefusedAddress(self.refused)
        if len(allowed) < len(results):
            logger.warning(
                "%s: ignoring forbidden addresses %s",
                host,
                ", ".join(r["host"] for r in results if r not in allowed),
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()


async def _download(
    url: str,
    *,
    block_size: int,
    connect_timeout: float,
    stall_timeout: float,
    max_redirects: int,
    max_bytes: int | None,
    allow_private: bool,
    is_forbidden: Callable[[str], bool],
) -> AsyncIterator[bytes]:
    """Stream the body of ``url`` (following redirects by hand) as blocks <= block_size."""
    label = source_label(url)
    current = check_url(url, allow_private=allow_private, is_forbidden=is_forbidden)
    resolver = None if allow_private else _GuardedResolver(is_forbidden)
    # No DNS cache: every hop is resolved (and so checked) afresh.
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    timeout = aiohttp.ClientTimeout(
        total=None,  # a long download is fine as long as bytes keep coming
        connect=connect_timeout,
        sock_connect=connect_timeout,
        sock_read=stall_timeout,  # also bounds the wait for response headers
    )
    # Ask for the bytes as stored; a server that compresses anyway is still decoded by
    # aiohttp, and max_bytes then counts decoded bytes (a compression bomb is capped).
    headers = {"Accept-Encoding": "identity", "User-Agent": "whisper-pipeline/1"}
    try:
        # trust_env=False: an environment proxy would connect for us, past the checks.
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers, trust_env=False
        ) as session:
            for hop in range(max_redirects + 1):
                if hop:
                    # Every hop is checked before it is connected to: a public URL
                    # must not redirect us to a private one.
                    try:
                        check_url(
                            current,
                            allow_private=allow_private,
                            is_forbidden=is_forbidden,
                        )
                    except SourceError as exc:
                        raise SourceError(
                            f"cannot download {label}: redirect refused: {exc}"
                        ) from None
                resp = await session.get(current, allow_redirects=False)
                try:
                    if resp.status in REDIRECT_STATUSES:
                        location = resp.headers.get("Location")
                        if not location:
                            raise SourceError(
                                f"cannot download {label}: HTTP {resp.status} redirect "
                                "without a Location header"
                            )
                        try:
                            nxt = current.join(URL(location))
                        except ValueError as exc:  # "http://[bad/x", a port of 99999
                            raise SourceError(
                                f"cannot download {label}: HTTP {resp.status} redirect to an "
                                f"invalid URL ({exc})"
                            ) from None
                        logger.debug(
                            "%s: HTTP %d redirect to %s",
                            label,
                            resp.status,
                            _url_label(nxt),
                        )
                        current = nxt
                        continue
                    if not 200 <= resp.status < 300:
                        reason = f" {resp.reason}" if resp.reason else ""
                        raise SourceError(
                            f"cannot download {label}: HTTP {resp.status}{reason}"
                        )
                    length = resp.content_length
                    if (
                        max_bytes is not None
                        and length is not None
                        and length > max_bytes
                    ):
                        raise SourceError(
                            f"cannot download {label}: {length} bytes is over the "
                            f"limit of {max_bytes} bytes"
                        )
                    total = 0
                    since, waited = 0, 0.0  # bytes and read-wait seconds since the last MIN_PROGRESS_BYTES
                    while True:
                        # read(n) returns what is buffered, up to n, as soon as any is.
                        t_read = time.monotonic()
                        block = await resp.content.read(block_size)
                        if not block:
                            return
                        # Only time spent waiting for the server counts: while the
                        # pipeline holds a block (backpressure), the socket fills.
                        waited += time.monotonic() - t_read
                        total += len(block)
                        since += len(block)
                        if since >= MIN_PROGRESS_BYTES:
                            since, waited = 0, 0.0
                        elif waited > stall_timeout:
                            raise SourceError(
                                f"cannot download {label}: too slow, {since} bytes in {waited:.0f} s "
                                f"(at least {MIN_PROGRESS_BYTES // 1024} KiB every {stall_timeout:g} s)"
                            )
                        if max_bytes is not None and total > max_bytes:
                            raise SourceError(
                                f"cannot download {label}: more than the limit of "
                                f"{max_bytes} bytes"
                            )
                        yield block
                finally:
                    # close(), not release(): drop the connection, never drain a body.
                    resp.close()
            raise SourceError(
                f"cannot download {label}: too many redirects (more than {max_redirects})"
            )
    except SourceError:
        raise
    except aiohttp.ClientConnectorError as exc:
        if resolver is not None and (
            isinstance(exc.os_error, _RefusedAddress) or resolver.refused
        ):
            raise SourceError(
                f"refusing to download {label}: {resolver.refused}"
            ) from None
        err = exc.os_error
        why = (
            os.strerror(err.errno)
            if isinstance(err.errno, int)
            else err.strerror or err
        )
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            raise SourceError(
                f"cannot download {label}: cannot resolve {exc.host}: {why}"
            )
        raise SourceError(
            f"cannot download {label}: cannot connect to {exc.host}:{exc.port}: {why}"
        ) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise SourceError(
            f"cannot download {label}: no connection within {connect_timeout:g} s"
        ) from exc
    except (aiohttp.SocketTimeoutError, asyncio.TimeoutError) as exc:
        raise SourceError(
            f"cannot download {label}: stalled, no data for {stall_timeout:g} s"
        ) from exc
    except aiohttp.InvalidURL as exc:
        raise SourceError(f"cannot download {label}: invalid URL ({exc})") from exc
    except aiohttp.ClientPayloadError as exc:
        raise SourceError(f"cannot download {label}: transfer broken ({exc})") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise SourceError(
            f"cannot download {label}: {type(exc).__name__}: {exc or 'connection failed'}"
        ) from exc
    finally:
        if resolver is not None:
            await resolver.close()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Finish everything still scheduled on ``loop`` and close it without warnings."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        # The threaded resolver and getaddrinfo use the default executor: join it.
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _iter_url(url: str, **kwargs) -> Iterator[bytes]:
    """Drive ``_download`` from synchronous code: one private event loop per call."""
    loop = asyncio.new_event_loop()
    agen = _download(url, **kwargs)
    try:
        while True:
            try:
                block = loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
            yield block
    finally:
        # On GeneratorExit (closed early) this runs the download's finally blocks:
        # response, session, connector and resolver are closed before the loop.
        try:
            loop.run_until_complete(agen.aclose())
        finally:
            _close_loop(loop)


def _open_file(path: str, label: str):
    try:
        return open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise SourceError(f"no such file: {label}") from None
    except IsADirectoryError:
        raise SourceError(f"is a directory, not a file: {label}") from None
    except PermissionError:
        raise SourceError(f"cannot read {label}: permission denied") from None
    except OSError as exc:
        raise SourceError(f"cannot read {label}: {exc.strerror or exc}") from None


def _iter_fd(fd: int, label: str, block_size: int) -> Iterator[bytes]:
    """Fixed-size reads from ``fd`` until EOF (a read may return less, e.g. from a pipe)."""
    while True:
        try:
            block = os.read(fd, block_size)
        except OSError as exc:
            raise SourceError(f"cannot read {label}: {exc.strerror or exc}") from None
        if not block:
            return
        yield block


def iter_source(
    source: Source,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    connect_timeout: float = 10.0,
    stall_timeout: float = 30.0,
    max_redirects: int = 5,
    max_bytes: int | None = None,
    allow_private: bool = True,
    stdin_fd: int | None = None,
) -> Iterator[bytes]:
    """Yield the bytes of ``source`` as blocks of 1..block_size bytes.

    source: an http(s) URL, a local path, ``"-"`` (stdin: ``stdin_fd`` or fd 0, not
    closed here), or bytes-like data (in-memory input, e.g. decoded base64).
    connect_timeout: seconds to resolve and connect; stall_timeout: seconds without a
    byte (headers or body) before giving up. max_bytes caps the size of any input.
    allow_private=False refuses private/loopback/metadata destinations (URLs only).

    Raises SourceError (one line, naming the input) for anything unreadable. An empty
    input yields nothing and is not an error here (decode reports it). Must not be
    driven from inside a running event loop (it runs its own).
    """
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    if max_redirects < 0:
        raise ValueError("max_redirects must not be negative")
    label = source_label(source)

    def capped(blocks: Iterator[bytes]) -> Iterator[bytes]:
        total = 0
        for block in blocks:
            total += len(block)
            if max_bytes is not None and total > max_bytes:
                raise SourceError(f"{label} is over the limit of {max_bytes} bytes")
            yield block

    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        if max_bytes is not None and view.nbytes > max_bytes:
            raise SourceError(f"{label} is over the limit of {max_bytes} bytes")
        for start in range(0, view.nbytes, block_size):
            yield bytes(view[start : start + block_size])
        return

    if isinstance(source, str) and source == "-":
        fd = 0 if stdin_fd is None else stdin_fd
        yield from capped(_iter_fd(fd, label, block_size))
        return

    if isinstance(source, str) and _URL_RE.match(source):
        yield from _iter_url(
            source,
            block_size=block_size,
            connect_timeout=connect_timeout,
            stall_timeout=stall_timeout,
            max_redirects=max_redirects,
            max_bytes=max_bytes,
            allow_private=allow_private,
            # Looked up per call so tests can mark an address as private.
            is_forbidden=is_forbidden_address,
        )
        return

    f = _open_file(os.fspath(source), label)
    with f:
        yield from capped(_iter_fd(f.fileno(), label, block_size))
