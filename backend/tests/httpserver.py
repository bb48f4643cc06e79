"""A real HTTP server on a free local port, for tests of what c3po sends out (webhooks, calendar fetches).

`serve(respond)` runs a threaded `http.server` on `host` (any 127.x address works on Linux) and records
every request; `respond(request)` returns `(status, headers, body)`, or `Reply.close` to drop the
connection without an answer. A test may swap `server.respond` while it runs.
"""

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    client: str  # the address the request came from


Answer = tuple[int, dict[str, str], bytes]
Respond = Callable[[Request], Answer | None]  # None: close the connection without answering


def ok(_: Request) -> Answer:
    return 200, {"Content-Type": "text/plain"}, b"ok"


@dataclass
class Server:
    host: str
    port: int
    respond: Respond
    requests: list[Request] = field(default_factory=list)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextmanager
def serve(
    respond: Respond = ok, *, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
) -> Iterator[Server]:
    """`tls`: a server-side context (certificate loaded) to answer HTTPS instead of HTTP."""
    server = Server(host, port, respond, scheme="https" if tls else "http")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body, self.client_address[0]
            )
            server.requests.append(request)
            answer = server.respond(request)
            if answer is None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            status, headers, content = answer
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_REPORT = do_PROPFIND = _handle  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name=f"http-{server.port}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
