"""The metrics HTTP endpoint (the app: ``serving.metrics_app``), served from
threads of its own so a scrape never waits on the event loop. The port
faces whoever can reach it, so no client can hold more than its share.

- One thread reads every request head with a selector, so a client that
  sends half a request (or nothing) costs a socket and a buffer, never a
  thread. It is dropped ``CONNECTION_TIMEOUT`` seconds after it connected
  if its head has not arrived by then.
- A complete head is answered by one of at most ``MAX_THREADS`` request
  threads (daemons); more complete requests wait for a free one. The
  answer is written with the same timeout (``sendall`` counts it in
  total), so a client that stops reading frees its thread too. The apps
  hold the GIL, so more threads would not answer faster, only slow the
  event loop.
- At most ``MAX_PENDING`` connections wait (for their head or for a
  thread); when a new one arrives past that, the oldest still sending its
  head is dropped, so a crowd of stalled clients cannot lock scrapers out.
  The listen backlog (``BACKLOG``) queues bursts of new connections.
- A head over ``MAX_HEAD_BYTES`` gets 414 or 431; a path that names no
  file gets 404 (paths are looked up in a table, never on the disk).
  One request per connection (wsgiref's HTTP/1.0).
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from serving.http_request import MAX_HEAD_BYTES, RequestHandler
from serving.metrics_app import WsgiApp

logger = logging.getLogger(__name__)


#: Seconds a connection has to send its request head, and to take its answer.
CONNECTION_TIMEOUT = 10.0
#: Requests answered at once, one thread each.
MAX_THREADS = 8
#: Connections waiting for their head or for a thread; past it the oldest is dropped.
MAX_PENDING = 512
#: Listen backlog: connections the kernel queues before the server accepts them.
BACKLOG = 1024

# -- connections -----------------------------------------------------------------------


@dataclass(eq=False)
class _Waiting:
    """A connection the selector holds: its head arriving, or complete and
    waiting for a thread."""

    sock: socket.socket
    address: Any
    deadline: float  # monotonic; for its head to arrive
    head: bytearray = field(default_factory=bytearray)
    draining: bool = False  # refused (414/431); read and drop what it still sends


def _head_complete(head: bytearray, start: int) -> bool:
    """An empty line ends the head (http.server accepts a bare LF too)."""
    return head.find(b"\n\n", start) >= 0 or head.find(b"\n\r\n", start) >= 0


def _refusal(status: HTTPStatus) -> bytes:
    body = f"{status.phrase}\n".encode()
    return (
        f"HTTP/1.0 {status.value} {status.phrase}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


#: accept() failing for want of file descriptors or memory: retry shortly.
_ACCEPT_LATER = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_PAUSE = 0.1  # seconds without accepting after accept() failed
_ACCEPT_BATCH = 64  # connections accepted before the loop looks at the others


class _Listener(WSGIServer):
    request_queue_size = BACKLOG
    allow_reuse_address = True


class _Listener6(_Listener):
    """An IPv6 address (``--host ::`` takes IPv4 clients too, as the gRPC
    and REST ports do: Linux's default is a dual-stack socket)."""

    address_family = socket.AF_INET6


@dataclass(frozen=True)
class Limits:
    """What the port gives its clients (see the module docstring): seconds to
    send a head and to take an answer, request threads, waiting connections."""

    timeout: float = CONNECTION_TIMEOUT
    max_threads: int = MAX_THREADS
    max_pending: int = MAX_PENDING

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.max_threads < 1 or self.max_pending < 1:
            raise ValueError("timeout, max_threads and max_pending must be positive")


class MetricsHttpServer:
    """The HTTP endpoint in threads of its own (the module docstring says how)."""

    def __init__(self, app: WsgiApp, host: str, port: int, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        host = host.strip("[]")  # "[::1]", as in a URL, is "::1"
        listener = _Listener6 if ":" in host else _Listener
        self._listener = make_server(host, port, app, server_class=listener)
        self._listener.socket.setblocking(False)
        self.port = int(self._listener.server_address[1])
        self._app = app
        self.timeout = limits.timeout
        self._max_pending = limits.max_pending
        self._slots = threading.BoundedSemaphore(limits.max_threads)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._listening = False
        self._accept_after = 0.0  # monotonic; accept() ran out of descriptors
        self._waiting: dict[socket.socket, _Waiting] = {}  # heads arriving, oldest first
        self._ready: deque[_Waiting] = deque()  # heads complete, for a thread
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close the port and every connection not yet answered; requests
        being answered finish on their own (daemon threads)."""
        self._stopping = True
        self._wake()
        if self._thread.ident is not None:
            self._thread.join()
        self._close_all()

    # -- the selector thread -----------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopping:
                now = time.monotonic()
                self._expire(now)
                self._dispatch()
                self._listen(now)
                wait = _ACCEPT_PAUSE  # at most: a pause in accepting ends on time
                if self._waiting:
                    first = next(iter(self._waiting.values()))
                    wait = min(wait, max(first.deadline - now, 0.0))
                for key, _ in self._selector.select(wait):
                    if key.fileobj is self._wake_r:
                        self._drain_wakeups()
                    elif key.fileobj is self._listener.socket:
                        self._accept()
                    else:
                        self._receive(key.data)
        finally:
            self._close_all()

    def _expire(self, now: float) -> None:
        while self._waiting:  # oldest first, and all have the same timeout
            first = next(iter(self._waiting.values()))
            if first.deadline > now:
                return
            self._drop(first)

    def _dispatch(self) -> None:
        while self._ready and self._slots.acquire(blocking=False):
            conn = self._ready.popleft()
            thread = threading.Thread(
                target=self._answer, args=(conn,), name="metrics-http-request", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:  # no thread to be had now
                self._slots.release()
                _close(conn.sock)
                return

    def _listen(self, now: float) -> None:
        """Accept while there is room: at the bound, a new connection pushes
        out the oldest one still sending its head; with none of those, new
        ones wait in the backlog."""
        full = len(self._waiting) + len(self._ready) >= self._max_pending
        listen = now >= self._accept_after and (bool(self._waiting) or not full)
        if listen and not self._listening:
            self._selector.register(self._listener.socket, selectors.EVENT_READ)
        elif not listen and self._listening:
            self._selector.unregister(self._listener.socket)
        self._listening = listen

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            full = len(self._waiting) + len(self._ready) >= self._max_pending
            if full and not self._waiting:
                return
            try:
                sock, address = self._listener.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionError:  # gone before it was accepted
                continue
            except OSError as exc:
                if exc.errno in _ACCEPT_LATER and self._waiting:
                    self._drop(next(iter(self._waiting.values())))  # frees a descriptor
                else:
                    self._accept_after = time.monotonic() + _ACCEPT_PAUSE
                if exc.errno not in _ACCEPT_LATER:
                    logger.warning("metrics HTTP: accept failed: %s", exc)
                return
            if full:
                self._drop(next(iter(self._waiting.values())))
            sock.setblocking(False)
            conn = _Waiting(sock, address, time.monotonic() + self.timeout)
            self._waiting[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._receive(conn)  # a scraper's request is usually there already

    def _receive(self, conn: _Waiting) -> None:
        size = 65536 if conn.draining else MAX_HEAD_BYTES + 1 - len(conn.head)
        try:
            data = conn.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # closed, or reset, before its head was complete
            self._drop(conn)
            return
        if conn.draining:
            return
        seen = len(conn.head)
        conn.head += data
        if _head_complete(conn.head, max(seen - 2, 0)):
            self._selector.unregister(conn.sock)
            del self._waiting[conn.sock]
            self._ready.append(conn)
        elif len(conn.head) > MAX_HEAD_BYTES:
            self._refuse(conn)

    def _refuse(self, conn: _Waiting) -> None:
        """Answer an over-long head, then read (and drop) what the client
        still sends until it closes or its time is up: closing on unread
        data would reset the connection and lose the answer."""
        line_ended = b"\n" in conn.head
        status = (
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE if line_ended
            else HTTPStatus.REQUEST_URI_TOO_LONG
        )  # fmt: skip
        conn.head = bytearray()
        conn.draining = True
        try:
            conn.sock.send(_refusal(status))  # a few bytes: the socket buffer takes them
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(conn)

    def _drop(self, conn: _Waiting) -> None:
        self._selector.unregister(conn.sock)
        del self._waiting[conn.sock]
        conn.sock.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _close_all(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in [*self._waiting.values(), *self._ready]:
            conn.sock.close()
        self._waiting.clear()
        self._ready.clear()
        self._selector.close()
        self._listener.server_close()
        self._wake_r.close()
        self._wake_w.close()

    # -- request threads ---------------------------------------------------------------

    def _answer(self, conn: _Waiting) -> None:
        try:
            conn.sock.settimeout(self.timeout)  # each read; sendall: the whole answer
            RequestHandler(
                conn.sock, conn.address, self._listener, head=bytes(conn.head), app=self._app
            )
        except OSError:  # timed out, or gone: nothing to answer
            pass
        except Exception:
            logger.exception("metrics HTTP: answering %s failed", conn.address[0])
        finally:
            _close(conn.sock)
            self._slots.release()
            self._wake()
