"""The gateway's HTTP/1.1 connections: llhttp parses (through httptools), this module keeps each
connection's state, and ingest/http_server.py decides the answers.

Why not aiohttp's server: with 100-span OTLP requests it took about 60 µs of CPU per request more than
a bare protocol that reads the body and answers (`benchmarks/http_floor.py`), a quarter of the
gateway's whole cost, spent on request and response objects the gateway does not need. The parsing is
the same llhttp aiohttp builds on, so the framing it refuses is the same: conflicting or repeated
Content-Length, Transfer-Encoding other than a final chunked, bad chunk sizes, obsolete line folding,
bare line feeds, bytes after a `Connection: close` request (tests/fuzz/test_hostile_gateway.py).

What a connection may do, and what it gets otherwise (answered once, then the connection is closed):
- a request line and headers within ``request_timeout_s`` of opening the connection or of the previous
  answer, else the connection is closed without an answer (slow-loris clients, idle keep-alive);
- a request target of at most 8 KiB, at most 128 header fields of at most 8 KiB each, and 64 KiB in
  all for the request line and headers (400);
- a body within ``request_timeout_s`` of its headers (408) and of at most ``max_body_bytes`` (413,
  checked as it arrives, whatever the framing);
- requests one at a time: pipelined ones wait their turn, and reading pauses while two are waiting.
A client that hangs up before its body is complete gets no answer (it cannot read one); its request
is still answered, and so counted, by the handler.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

import httptools

from ingest.errors import IngestError, InvalidArgument, PayloadTooLarge

__all__ = ["HttpServer", "Request", "RequestTimeout", "Response"]

log = logging.getLogger(__name__)

_MAX_TARGET_BYTES = 8 * 1024
_MAX_FIELD_BYTES = 8 * 1024
_MAX_FIELDS = 128
_MAX_HEAD_BYTES = 64 * 1024  # (httptools holds a field in memory until it ends, so its size is capped here too)
_MAX_WAITING = 2            # requests parsed and waiting for their turn before reading pauses
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RequestTimeout(IngestError):
    http_status = 408
    reason = "request_timeout"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class _Refused(Exception):
    """The request cannot be parsed or breaks a limit: answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Body:
    """A request body as it arrives."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.complete = False
        self._error: IngestError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._limit:
            self.fail(PayloadTooLarge(f"request body exceeds the limit of {self._limit} bytes"))
            raise _Discard
        self._chunks.append(chunk)

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: IngestError) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self._chunks = []
            self._wake()

    async def read(self, timeout_s: float) -> list[bytes]:
        """The whole body, as the chunks it arrived in; raises what ended it early, or RequestTimeout."""
        if not self.complete and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            except TimeoutError:
                self.fail(RequestTimeout(f"request body not received within {timeout_s}s"))
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error
        chunks, self._chunks = self._chunks, []
        return chunks

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Discard(Exception):
    """The body broke its limit: stop parsing, answer, and drop what else the client sends."""


@dataclass(eq=False)
class Request:
    method: str
    path: str
    http_version: str
    headers: dict[str, str]          # lower-case names; a repeated field keeps its first value
    remote: str
    body: Body
    keep_alive: bool = True
    _continue: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None else None  # llhttp accepted only digits

    def send_continue(self) -> None:
        """Tell a client that sent `Expect: 100-continue` to send its body."""
        self._continue()


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    def __init__(self, handler: Handler, *, request_timeout_s: float, max_body_bytes: int) -> None:
        self.handler = handler
        self.request_timeout_s = request_timeout_s
        self.max_body_bytes = max_body_bytes
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._date = (0, "")

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None, backlog: int = 1024) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), host, port, ssl=ssl_context, backlog=backlog)

    async def stop(self, timeout_s: float) -> None:
        """Stop accepting, let requests being handled finish (up to ``timeout_s``), close everything."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close_after_this_request()
        tasks = [c.serving for c in self._connections if c.serving is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        for connection in list(self._connections):
            connection.abort()

    def date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote = ""
        self._waiting: deque[Request] = deque()
        self._next: asyncio.Future[None] | None = None
        self._parsing: Request | None = None
        self._target = bytearray()
        self._headers: dict[str, str] = {}
        self._fields = 0
        self._in_head = True        # between requests or inside a request line and headers
        self._head_bytes = 0        # bytes of reads that held nothing but the current request line and headers
        self._boundaries = 0        # headers and messages completed so far
        self._eof = False           # the client sent everything it will send
        self._gone = False          # the client hung up (or the connection broke): no more writes
        self._closing = False       # no more requests on this connection
        self._discarding = False    # parsing stopped: what arrives is dropped until the connection closes
        self._timer: asyncio.TimerHandle | None = None
        self.serving: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # (a stream transport; uvloop's is no subclass)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) else ""
        # Started here, not with the protocol: a TLS handshake that fails never makes a connection.
        self.serving = self._loop.create_task(self._serve())
        self._server._connections.add(self)
        self._arm_deadline()  # for the first request's headers

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._in_head and self._head_bytes > _MAX_HEAD_BYTES:
            self._refuse(400, f"request line and headers longer than {_MAX_HEAD_BYTES} bytes")
            return
        boundaries = self._boundaries
        try:
            self._parser.feed_data(data)
            if self._in_head and self._boundaries == boundaries:
                self._head_bytes += len(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Discard):
                self._stop_parsing()
            elif isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause))
            else:
                raise
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades (and HTTP/2 over cleartext) are not supported: use HTTP/1.1")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool:
        self._eof = True
        self._hung_up()
        return True  # the transport stays open until an answer to a complete request is written

    def connection_lost(self, exc: Exception | None) -> None:
        self._hung_up()
        self._server._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._wake()

    # ---------------------------------------------------------------- llhttp callbacks

    def on_message_begin(self) -> None:
        self._target.clear()
        self._headers, self._fields = {}, 0

    def on_url(self, part: bytes) -> None:
        self._target += part
        if len(self._target) > _MAX_TARGET_BYTES:
            raise _Refused(400, f"request target longer than {_MAX_TARGET_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:  # (httptools hands over whole fields)
        self._fields += 1
        if self._fields > _MAX_FIELDS:
            raise _Refused(400, f"more than {_MAX_FIELDS} header fields")
        if len(name) + len(value) > _MAX_FIELD_BYTES:
            raise _Refused(400, f"header field longer than {_MAX_FIELD_BYTES} bytes")
        self._headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))  # a repeat: the first counts

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._boundaries += 1
        target = self._target.decode("latin-1")
        request = Request(method=self._parser.get_method().decode("ascii", "replace"),
                          path=target.split("?", 1)[0], http_version=self._parser.get_http_version(),
                          headers=self._headers, remote=self._remote, body=Body(self._server.max_body_bytes),
                          keep_alive=bool(self._parser.should_keep_alive()), _continue=self._send_continue)
        self._parsing = request
        self._waiting.append(request)
        if len(self._waiting) >= _MAX_WAITING and self._transport is not None:
            self._transport.pause_reading()
        self._wake()

    def on_body(self, chunk: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body.feed(chunk)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.body.finish()
            self._parsing = None
        self._in_head, self._head_bytes = True, 0
        self._boundaries += 1

    # ---------------------------------------------------------------- serving

    async def _serve(self) -> None:
        while True:
            while not self._waiting:
                if self._gone or self._closing:
                    return
                self._next = self._loop.create_future()
                await self._next
                self._next = None
            request = self._waiting[0]
            if self._timer is not None:
                self._timer.cancel()
            try:
                response = await self._server.handler(request)
            except Exception:
                log.exception("unexpected error answering %s %s", request.method, request.path[:100])
                response = Response(500, b"internal error")
            if not self._waiting or self._waiting[0] is not request:
                return  # the connection was refused meanwhile, with its own answer
            self._waiting.popleft()
            reusable = request.keep_alive and request.body.complete and not self._closing
            self._write(response, close=not reusable)
            if not reusable:
                self._finish()
                return
            if self._transport is not None and len(self._waiting) < _MAX_WAITING:
                self._transport.resume_reading()
            self._arm_deadline()  # for the next request's headers, or idle

    def close_after_this_request(self) -> None:
        self._closing = True
        if not self._waiting:
            self.abort()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()
        self._wake()

    def _send_continue(self) -> None:
        if not self._gone and self._transport is not None:
            self._transport.write(_CONTINUE)

    def _write(self, response: Response, close: bool) -> None:
        if self._gone or self._transport is None or self._transport.is_closing():
            return
        head = [f"HTTP/1.1 {response.status} {_phrase(response.status)}\r\n"
                f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n"
                f"Date: {self._server.date()}\r\nServer: rampart\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in response.headers]
        if close:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        self._transport.write("".join(head).encode("latin-1") + response.body)

    def _refuse(self, status: int, message: str) -> None:
        log.info("refused a request from %s: %s", self._remote, message)
        self._stop_parsing()
        if self._parsing is not None:
            # Broken inside a body: that request's handler answers, with this message.
            self._parsing.body.fail(InvalidArgument(message))
            return
        # Broken in a request line or headers: one answer for the connection, and nothing else read
        # on it is answered (requests pipelined before the broken one included).
        self._waiting.clear()
        self._write(Response(status, f"{message}\n".encode()), close=True)
        self._finish()

    def _stop_parsing(self) -> None:
        self._discarding = True
        self._closing = True

    def _finish(self) -> None:
        """No more answers on this connection: close it once the client is done sending (lingering,
        so that unread bytes from it do not turn the close into a reset that destroys the answer)."""
        self._closing = True
        self._discarding = True
        if self._transport is None or self._transport.is_closing():
            return
        if self._gone or self._eof:
            self._transport.close()
            return
        self._transport.resume_reading()  # (to drain what the client still sends)
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._arm_deadline()  # for the client to finish sending

    def _hung_up(self) -> None:
        self._gone = self._gone or bool(self._waiting and not self._waiting[-1].body.complete)
        for request in self._waiting:
            request.body.fail(InvalidArgument("request body incomplete (the client closed the connection)"))
        if not self._waiting:
            self._gone = True
            if self._transport is not None:
                self._transport.close()
        self._closing = True
        self._wake()

    def _arm_deadline(self) -> None:
        """Close the connection unless the client does its next part within ``request_timeout_s``."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._server.request_timeout_s, self.abort)

    def _wake(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.set_result(None)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
