"""The web view's HTTP side, sans-IO: a request head in, a response's bytes out.

The notifier's WebSocket port also answers plain HTTP, so a browser pointed at
``http://host:ws_port/`` gets the page (``ringex/market_data/static/``) that then
opens a WebSocket on the same port. ``ringex.market_data.ws_server`` reads a
connection's request head (bounded, under the handshake deadline) and asks
``parse_head`` what it is: a WebSocket upgrade goes on to wsproto as before, anything
else is answered by ``StaticSite.respond`` and the connection is closed.

```
 GET / HTTP/1.1 ──► WebSocketServer (head, bounded) ──► parse_head ──► HttpRequest
                                                         │ upgrade? ──► wsproto (the feed)
                                                         └ else ────► StaticSite.respond ──► bytes, close
```

One request per connection (``Connection: close``): the page is five small files,
so keep-alive would save a handful of handshakes at the price of a request
state machine the hostile-input rules would have to cover too.

Error handling: a head h11 cannot parse, or one longer than ``MAX_HEAD_BYTES``,
raises ``BadRequest`` with the 4xx status to answer (``bad_request_response``);
nothing a client sends makes ``respond`` raise: an unknown path is a 404, another
method a 405. Files are looked up by exact name in a table built at start-up, so a
target cannot name anything outside it (no path is ever joined).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterable
from importlib import resources

import h11

__all__ = [
    "MAX_HEAD_BYTES",
    "HttpRequest",
    "BadRequest",
    "parse_head",
    "bad_request_response",
    "too_many_requests_response",
    "StaticSite",
]

# Like h11's DEFAULT_MAX_INCOMPLETE_EVENT_SIZE (and what the WebSocket handshake
# allowed before): a browser's head is under 2 KiB; 16 KiB leaves room for cookies
# another page on the same host set, and bounds what a connection makes us hold.
MAX_HEAD_BYTES = 16 * 1024
# The page's files, shipped in the package (pyproject's package-data).
STATIC_PACKAGE = "ringex.market_data"
STATIC_DIR = "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".md": "text/markdown; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}
# Worth compressing: text. Smaller than this, gzip's header costs more than it saves.
COMPRESSIBLE = ("text/", "application/json", "image/svg+xml")
MIN_GZIP_BYTES = 1024
# The page loads only what ringex serves (the feed may come from another host:
# ws: / wss:). Inline style attributes: the chart library sizes its canvases with them.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    429: "Too Many Requests",
}


@dataclasses.dataclass(frozen=True)
class HttpRequest:
    """A parsed request head: method and target as sent, header names lower-case."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: bytes) -> bytes:
        """The values of header ``name`` (lower-case), comma-joined; b"" if absent."""
        return b", ".join(value for key, value in self.headers if key == name)

    def tokens(self, name: bytes) -> set[bytes]:
        """The comma-separated tokens of header ``name``, lower-case."""
        return {t.strip().lower() for t in self.header(name).split(b",") if t.strip()}

    @property
    def is_websocket_upgrade(self) -> bool:
        return b"websocket" in self.tokens(b"upgrade")


class BadRequest(Exception):
    """A request head we refuse to parse; ``status`` is the 4xx to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_head(head: bytes) -> HttpRequest:
    """Parse one complete request head (up to and including the blank line)."""
    if len(head) > MAX_HEAD_BYTES:
        raise BadRequest(431, f"request head longer than {MAX_HEAD_BYTES} bytes")
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        conn.receive_data(head)
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
        raise BadRequest(status, f"bad HTTP request: {exc}") from None
    if not isinstance(event, h11.Request):  # NEED_DATA: the caller cut the head short
        raise BadRequest(400, "incomplete HTTP request head")
    return HttpRequest(event.method, event.target, tuple((k.lower(), v) for k, v in event.headers))


def _response(
    status: int, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = (), head_only: bool = False
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "X-Content-Type-Options: nosniff",
        "Cache-Control: no-cache",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


def bad_request_response(exc: BadRequest) -> bytes:
    return _response(exc.status, exc.reason.encode() + b"\n", CONTENT_TYPES[""])


def too_many_requests_response(why: str) -> bytes:
    return _response(429, why.encode() + b"\n", CONTENT_TYPES[""])


@dataclasses.dataclass(frozen=True)
class _File:
    content_type: str
    body: bytes
    gzipped: bytes | None


class StaticSite:
    """The page's files, read once from the package, and ``/symbols.json`` (the
    exchange's symbols, so the page needs no request of its own to list them).

    ``respond(request) -> bytes`` is a whole response: GET and HEAD of a known path,
    gzip-compressed when the client accepts it; 404, 405 otherwise.
    """

    def __init__(self, symbols: Iterable[str], files: dict[str, bytes] | None = None) -> None:
        if files is None:
            files = dict(_package_files())
        files = dict(files)
        files["/symbols.json"] = json.dumps({"symbols": list(symbols)}).encode()
        if "/index.html" in files:
            files["/"] = files["/index.html"]
        self.files = {path: self._prepare(path, body) for path, body in files.items()}

    @staticmethod
    def _prepare(path: str, body: bytes) -> _File:
        name = path.rsplit("/", 1)[-1]
        ext = name[name.rfind(".") :] if "." in name else ""
        content_type = CONTENT_TYPES.get(ext, "application/octet-stream") if path != "/" else CONTENT_TYPES[".html"]
        gzipped = None
        if content_type.startswith(COMPRESSIBLE) and len(body) >= MIN_GZIP_BYTES:
            # mtime=0: the same bytes on every start, whatever the files' dates
            gzipped = gzip.compress(body, compresslevel=9, mtime=0)
        return _File(content_type, body, gzipped)

    def respond(self, request: HttpRequest) -> bytes:
        head_only = request.method == b"HEAD"
        if request.method not in (b"GET", b"HEAD"):
            return _response(405, b"only GET and HEAD here\n", CONTENT_TYPES[""], [("Allow", "GET, HEAD")])
        path = request.target.split(b"?", 1)[0].split(b"#", 1)[0]
        file = self.files.get(path.decode("latin-1"))
        if file is None:
            return _response(404, b"not found\n", CONTENT_TYPES[""], head_only=head_only)
        extra = [("Content-Security-Policy", CONTENT_SECURITY_POLICY), ("Vary", "Accept-Encoding")]
        body = file.body
        if file.gzipped is not None and b"gzip" in {t.split(b";")[0] for t in request.tokens(b"accept-encoding")}:
            body = file.gzipped
            extra.append(("Content-Encoding", "gzip"))
        return _response(200, body, file.content_type, extra, head_only=head_only)


def _package_files() -> Iterable[tuple[str, bytes]]:
    """Every file under the package's ``static/`` as (URL path, bytes)."""
    root = resources.files(STATIC_PACKAGE) / STATIC_DIR

    def walk(node, prefix: str):
        for entry in node.iterdir():
            if entry.is_dir():
                yield from walk(entry, f"{prefix}{entry.name}/")
            elif not entry.name.startswith("."):
                yield f"{prefix}{entry.name}", entry.read_bytes()

    yield from walk(root, "/")
