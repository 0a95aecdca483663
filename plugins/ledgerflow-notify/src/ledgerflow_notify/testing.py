"""Real receivers for tests of notifications: an HTTP server and an SMTP server on 127.0.0.1,
each in its own thread, recording what they receive and answering as they are told.

They are what this distribution's own tests run against, and they serve an application's tests
of its workflows' notifications just as well::

    with WebhookReceiver() as receiver:
        receiver.reply(Reply(status=503), Reply(status=200))
        ...  # a step posts to receiver.url
        assert len(receiver.requests) == 2

:class:`SMTPReceiver` needs ``aiosmtpd`` (``pip install ledgerflow-notify[test]``).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ledgerflow_notify.smtp import FROM_ENV, HOST_ENV, PORT_ENV

if TYPE_CHECKING:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = [
    "ReceivedMail",
    "ReceivedRequest",
    "Reply",
    "SMTPReceiver",
    "WebhookReceiver",
]

HANG_LIMIT = 30.0
"""The longest a :class:`Reply` with ``hang`` holds a request, should the receiver never be
stopped."""


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Reply:
    """How :class:`WebhookReceiver` answers one request: ``status``, ``body`` and ``headers``;
    with ``hang``, it never answers (it holds the request until the receiver stops), for a
    client's timeout to expire."""

    status: int = 200
    body: bytes = b"ok"
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass(frozen=True, kw_only=True)
class ReceivedRequest:
    """A request :class:`WebhookReceiver` received: ``headers`` are keyed by lower-case name;
    ``body`` is the raw bytes; ``received_at`` is the time it arrived (``time.monotonic()``)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        """The body, decoded as JSON."""
        return json.loads(self.body)


class WebhookReceiver:
    """A real HTTP server (``http.server.ThreadingHTTPServer``) on 127.0.0.1 and a free port,
    serving in a thread from :meth:`start` (or ``with``) to :meth:`stop`.

    It records every request (:attr:`requests`) and answers each with the next of the
    :class:`Reply` s queued by :meth:`reply`, then with ``default`` once they run out.
    """

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default if default is not None else Reply()
        self._replies: deque[Reply] = deque()
        self._requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL to post to (path ``/hook``; any path is answered alike)."""
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    @property
    def requests(self) -> list[ReceivedRequest]:
        """The requests received so far, in order of arrival (a copy)."""
        with self._lock:
            return list(self._requests)

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order (after those already queued)."""
        with self._lock:
            self._replies.extend(replies)

    def start(self) -> Self:
        """Start serving; returns the receiver."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a test's output is no place for an access log

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._released.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hanging requests, stop serving and close the socket."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = ReceivedRequest(
            method=handler.command,
            path=handler.path,
            headers={name.lower(): value for name, value in handler.headers.items()},
            body=body,
            received_at=time.monotonic(),
        )
        with self._lock:
            self._requests.append(request)
            answer = self._replies.popleft() if self._replies else self.default
        if answer.hang:
            self._released.wait(HANG_LIMIT)
            handler.close_connection = True
            return
        # the client may have given up already (its timeout): nobody to answer then
        with contextlib.suppress(OSError):
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(answer.body)))
            handler.end_headers()
            handler.wfile.write(answer.body)


# --------------------------------------------------------------------------------------------
# SMTP
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReceivedMail:
    """A message :class:`SMTPReceiver` accepted: the envelope's sender and recipients, and the
    message, parsed (``message["Message-ID"]``, ``message.get_content()``)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage


class SMTPReceiver:
    """A real SMTP server (``aiosmtpd``'s ``Controller``) on 127.0.0.1 and a free port,
    serving in a thread from :meth:`start` (or ``with``) to :meth:`stop`.

    It accepts every message (:attr:`mails`) unless told otherwise: :meth:`reply_to_data`
    queues replies to the next ``DATA`` commands (``"451 4.3.0 Try again later"``), and
    :meth:`refuse` refuses a recipient for good. :attr:`data_commands` counts the ``DATA``
    commands received, which is the number of delivery attempts that got that far.
    """

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self._replies: deque[str] = deque()
        self._refused: dict[str, str] = {}
        self._mails: list[ReceivedMail] = []
        self._data_commands = 0
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def mails(self) -> list[ReceivedMail]:
        """The messages accepted so far, in order (a copy)."""
        with self._lock:
            return list(self._mails)

    @property
    def data_commands(self) -> int:
        """How many ``DATA`` commands were received, accepted or not."""
        with self._lock:
            return self._data_commands

    def environment(self, sender: str = "Ledgerflow <ledgerflow@example.com>") -> dict[str, str]:
        """The settings that make the ``email`` notifier send to this receiver, from
        ``sender``: set them in the environment (``monkeypatch.setenv``)."""
        return {HOST_ENV: self.host, PORT_ENV: str(self.port), FROM_ENV: sender}

    def reply_to_data(self, *replies: str) -> None:
        """Answer the next ``DATA`` commands with ``replies`` (full SMTP replies, code first),
        in order; once they run out, messages are accepted again."""
        with self._lock:
            self._replies.extend(replies)

    def refuse(self, address: str, reply: str = "550 5.1.1 No such user") -> None:
        """Refuse ``address`` as a recipient with ``reply``."""
        with self._lock:
            self._refused[address] = reply

    def start(self) -> Self:
        """Start serving; returns the receiver."""
        from aiosmtpd.controller import Controller

        self.port = _free_port(self.host)
        controller = Controller(
            self, hostname=self.host, port=self.port, server_hostname="localhost"
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # aiosmtpd's handler hooks, called in the server's thread

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Accept ``address`` unless it is refused."""
        with self._lock:
            refusal = self._refused.get(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Record the message, or answer with the next queued reply."""
        with self._lock:
            self._data_commands += 1
            if self._replies:
                return self._replies.popleft()
        raw = envelope.original_content or envelope.content or b""
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        parsed = email.message_from_bytes(data, EmailMessage, policy=email.policy.default)
        with self._lock:
            self._mails.append(
                ReceivedMail(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    message=parsed,
                )
            )
        return "250 Message accepted for delivery"


def _free_port(host: str) -> int:
    """A port nobody listens on now (aiosmtpd needs the number before it binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
