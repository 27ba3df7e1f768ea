"""The HTTP server: routing, request log, retry counters, streaming and hangs.

Contract:

* ``FakeModelAPI(port=0)`` binds 127.0.0.1 only; ``start()`` (or ``with``)
  serves in a daemon thread; ``url`` is ``http://127.0.0.1:PORT`` (Claude's
  ``ANTHROPIC_BASE_URL``; Codex's provider ``base_url`` is ``url + "/v1"``).
* Routes: ``POST /v1/messages`` (Anthropic, SSE when ``stream``),
  ``POST /v1/messages/count_tokens``, ``POST /v1/responses`` (OpenAI
  Responses, SSE when ``stream``), ``GET /v1/models`` (Anthropic shape when the
  request carries ``anthropic-version``, else OpenAI), ``HEAD|GET /`` and
  ``/api/hello`` (200: Claude pre-connects with ``HEAD /``, and checks
  ``HEAD /api/hello`` when nonessential traffic is allowed). Query
  strings are ignored. Anything else: 404 JSON, logged with behaviour ``unknown_path``.
* Every request appends one :class:`RequestRecord` to ``requests`` (and one
  JSON line to ``log_path``) *before* its answer is written, so a test can see
  a hanging request while it hangs. With ``dump_dir`` each request's headers
  and body are also written there, for finding out what a CLI sends.
* Hanging answers (``no_response``, ``hang_after_first_delta``) hold the
  connection until ``stop()`` or ``hang_seconds``, then close it unanswered.
  A non-streaming request (Claude's fallback after a broken stream) gets the
  HTTP error of a StreamError's kind, and never an answer for a Hang.
* ``stop()`` is idempotent and ends all connections, hanging ones included.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from . import anthropic, openai, sse
from .behaviours import STATUS_FOR_KIND, Action, Decision, Fail, Hang, Say, Shell, StreamError, plan

DEFAULT_MODELS = ("claude-fake-1", "gpt-fake-1")


@dataclass
class RequestRecord:
    """One request as the server saw and answered it.

    ``behaviour``: the plan name (``text``, ``write_commit``..., ``default`` when
    no marker, ``side`` for CLI side requests, ``unknown:X``), or a route name
    (``count_tokens``, ``models``, ``unknown_path``, ``bad_body``).
    ``outcome``: ``text``, ``tool:NAME``, ``error:STATUS``, ``stream_error``,
    ``hang_after_first_delta``, ``no_response``, ``json``.
    ``attempt``: earlier requests seen at this same conversation position.
    """

    seq: int
    time: float
    method: str
    path: str
    status: int
    behaviour: str
    outcome: str
    dialect: str | None = None
    model: str | None = None
    marker: str | None = None
    key: str | None = None
    steps: int = 0
    n_messages: int = 0
    attempt: int = 0
    side: bool = False
    stream: bool = False
    user_agent: str = ""
    usage: dict[str, int] | None = None
    finished: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api: FakeModelAPI, addr: tuple[str, int]) -> None:
        self.api = api
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.conns_lock:
                self.server.conns.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.api._handle(self)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    # -- low-level writers ------------------------------------------------
    def read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", f"req_fake{self.server.api._seq:06d}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_stream(self, frames: Any, hold: threading.Event, hang_seconds: float) -> str:
        """Write SSE frames chunked; returns ``done``, ``hung`` or ``client_gone``."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_fake{self.server.api._seq:06d}")
        self.end_headers()
        try:
            for frame in frames:
                if frame is sse.HANG:
                    self.wfile.flush()
                    hold.wait(hang_seconds)
                    self.close_connection = True
                    return "hung"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return "client_gone"
        return "done"


def _decode(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported content-encoding {encoding!r}")


def _outcome(action: Action, stream: bool) -> tuple[int, str]:
    """The HTTP status (0: none) and outcome label an action gets."""
    if isinstance(action, Fail):
        return action.status, f"error:{action.status}"
    if isinstance(action, StreamError):
        if stream:
            return 200, "stream_error"
        status = STATUS_FOR_KIND.get(action.kind, 500)
        return status, f"error:{status}"
    if isinstance(action, Hang):
        return (
            (200, "hang_after_first_delta") if action.first_delta and stream else (0, "no_response")
        )
    return 200, "tool:shell" if isinstance(action, Shell) else "text"


class FakeModelAPI:
    """A scripted Anthropic + OpenAI Responses API on 127.0.0.1 (see module doc)."""

    def __init__(
        self,
        port: int = 0,
        *,
        log_path: str | Path | None = None,
        dump_dir: str | Path | None = None,
        default_behaviour: str = "text",
        hang_seconds: float = 600.0,
        models: tuple[str, ...] = DEFAULT_MODELS,
    ) -> None:
        self._port = port
        self.log_path = Path(log_path) if log_path else None
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.default_behaviour = default_behaviour
        self.hang_seconds = hang_seconds
        self.models = list(models)
        self._records: list[RequestRecord] = []
        self._attempts: dict[tuple[Any, ...], int] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> FakeModelAPI:
        """Bind and serve in a background thread; returns self."""
        if self._httpd is None:
            self._httpd = _Server(self, ("127.0.0.1", self._port))
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fakeapi",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests and close every connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with httpd.conns_lock:
            conns = list(httpd.conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT`` (no trailing slash, no ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    # -- what tests read ----------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of all requests so far, in arrival order."""
        with self._lock:
            return list(self._records)

    @property
    def main_requests(self) -> list[RequestRecord]:
        """Model requests that are not side requests."""
        return [r for r in self.requests if r.dialect and not r.side]

    @property
    def side_requests(self) -> list[RequestRecord]:
        """The CLIs' own small requests (titles, checks) that carried no marker."""
        return [r for r in self.requests if r.side]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[RequestRecord]:
        """Wait until ``predicate(requests)`` is true; returns the requests (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            reqs = self.requests
            if predicate(reqs):
                return reqs
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"fakeapi: condition not met in {timeout}s; {len(reqs)} requests"
                )
            time.sleep(0.02)

    # -- internals ------------------------------------------------------------
    def _record(self, rec: RequestRecord) -> RequestRecord:
        with self._lock:
            self._records.append(rec)
            if self.log_path:
                with self.log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(rec.to_json()) + "\n")
        return rec

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _attempt(self, key: tuple[Any, ...]) -> int:
        with self._lock:
            n = self._attempts.get(key, 0)
            self._attempts[key] = n + 1
            return n

    def _dump(self, seq: int, h: _Handler, raw: bytes) -> None:
        if not self.dump_dir:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        name = urlsplit(h.path).path.strip("/").replace("/", "_") or "root"
        (self.dump_dir / f"{seq:04d}-{h.command}-{name}.json").write_text(
            json.dumps(
                {
                    "method": h.command,
                    "path": h.path,
                    "headers": dict(h.headers.items()),
                    "body": body,
                },
                indent=1,
            )
        )

    def _handle(self, h: _Handler) -> None:
        seq = self._next_seq()
        path = urlsplit(h.path).path.rstrip("/")
        base: dict[str, Any] = {
            "seq": seq,
            "time": time.time(),
            "method": h.command,
            "path": h.path,
            "user_agent": h.headers.get("user-agent", ""),
        }
        try:
            raw = _decode(h.read_body(), h.headers.get("content-encoding", ""))
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            self._record(
                RequestRecord(
                    **base, status=400, behaviour="bad_body", outcome="error:400", notes=[str(exc)]
                )
            )
            h.send_json(
                400, {"error": {"type": "invalid_request_error", "message": f"fakeapi: {exc}"}}
            )
            return
        self._dump(seq, h, raw)
        headers = {k.lower(): v for k, v in h.headers.items()}
        route = (h.command, path)
        if route == ("POST", "/v1/messages"):
            self._model_request(h, base, anthropic, anthropic.parse(body, headers))
        elif route == ("POST", "/v1/responses"):
            self._model_request(h, base, openai, openai.parse(body, headers))
        elif route == ("POST", "/v1/messages/count_tokens"):
            self._record(
                RequestRecord(
                    **base,
                    status=200,
                    behaviour="count_tokens",
                    outcome="json",
                    dialect="anthropic",
                    model=body.get("model"),
                    finished=True,
                )
            )
            h.send_json(200, anthropic.count_tokens(body))
        elif path in ("", "/api/hello") and h.command in ("HEAD", "GET"):
            self._record(
                RequestRecord(**base, status=200, behaviour="root", outcome="json", finished=True)
            )
            h.send_json(200, {"fakeapi": True})
        elif h.command == "GET" and path in ("/v1/models", "/models"):
            dialect = "anthropic" if "anthropic-version" in headers else "openai"
            self._record(
                RequestRecord(
                    **base,
                    status=200,
                    behaviour="models",
                    outcome="json",
                    dialect=dialect,
                    finished=True,
                )
            )
            h.send_json(
                200,
                anthropic.models(self.models)
                if dialect == "anthropic"
                else openai.models(self.models),
            )
        else:
            self._record(
                RequestRecord(
                    **base, status=404, behaviour="unknown_path", outcome="error:404", finished=True
                )
            )
            h.send_json(
                404,
                {
                    "type": "error",
                    "error": {
                        "type": "not_found_error",
                        "message": f"fakeapi: no route for {h.command} {path}",
                    },
                },
            )

    def _model_request(self, h: _Handler, base: dict[str, Any], dialect: Any, conv: Any) -> None:
        attempt = self._attempt(
            (conv.dialect, conv.key, conv.n_messages, conv.marker.raw if conv.marker else "")
        )
        decision: Decision = plan(conv, attempt, self.default_behaviour)
        action = decision.action
        status, outcome = _outcome(action, conv.stream)
        u = decision.usage
        rec = self._record(
            RequestRecord(
                **base,
                status=status,
                behaviour=decision.behaviour,
                outcome=outcome,
                dialect=conv.dialect,
                model=conv.model,
                marker=conv.marker.raw if conv.marker else None,
                key=conv.key,
                steps=conv.steps,
                n_messages=conv.n_messages,
                attempt=attempt,
                side=conv.side,
                stream=conv.stream,
                usage={
                    "input_tokens": u.input_tokens,
                    "cached_tokens": u.cached_tokens,
                    "output_tokens": u.output_tokens,
                }
                if isinstance(action, (Say, Shell))
                else None,
            )
        )
        if isinstance(action, Fail):
            extra = dialect.error_headers(action)
            if action.retry_after is not None:
                ra = action.retry_after
                extra["retry-after"] = str(int(ra)) if ra == int(ra) else str(ra)
            body = (
                openai.error_body(action)
                if dialect is openai
                else dialect.error(action.kind, action.message)
            )
            h.send_json(action.status, body, extra)
        elif isinstance(action, Hang) and not (action.first_delta and conv.stream):
            self._stopping.wait(self.hang_seconds)
            h.close_connection = True
        elif isinstance(action, StreamError) and not conv.stream:
            h.send_json(status, dialect.error(action.kind, action.message))
        elif conv.stream:
            result = h.send_stream(
                dialect.stream(conv, action, u), self._stopping, self.hang_seconds
            )
            if result != "done":
                rec.notes.append(result)
        else:
            body = (
                anthropic.message(conv, action, u)
                if dialect is anthropic
                else openai.response(conv, action, u)
            )
            h.send_json(200, body)
        rec.finished = True
