"""A loopback HTTP server for tests: serves files from a folder, plus /stall/NAME (sends
part of a file, then stops sending) and anything else missing as 404."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    requests: list

    def log_message(self, *a):  # keep test output clean
        pass

    def do_GET(self):
        self.requests.append(self.path)
        stall = self.path.startswith("/stall/")
        name = self.path.split("?")[0].split("/")[-1]
        f = self.root / name
        if not f.is_file():
            self.send_error(404, "Not Found")
            return
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if stall:
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            time.sleep(60)  # the client must give up long before this
            return
        for i in range(0, len(data), 64 * 1024):
            self.wfile.write(data[i : i + 64 * 1024])


class LoopbackServer:
    def __init__(self, root):
        handler = type("H", (_Handler,), {"root": Path(root), "requests": []})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.requests = handler.requests
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def stop_loop_thread(loop: asyncio.AbstractEventLoop, thread: threading.Thread, cleanup) -> None:
    """Stop an asyncio loop that runs in ``thread`` (an aiohttp test server's): await
    ``cleanup()`` there (the runner's), cancel what is still pending (a keep-alive
    connection's handler, a stalled response) and let it finish, then stop and close the
    loop. A task left pending when its loop closes is reported ("Task was destroyed but it
    is pending!") whenever it is garbage-collected, into whatever test's output is live then."""

    async def finish():
        await cleanup()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(finish(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
