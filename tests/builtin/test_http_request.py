"""ledgerflow.http_request against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ledgerflow import definitions
from ledgerflow.engine import Engine
from ledgerflow.worker import Worker

WORKFLOW: dict[str, Any] = {
    "name": "Caller",
    "version": 1,
    "initial_state": "new",
    "states": ["new", "called"],
    "terminal_states": ["called"],
    "transitions": [
        {
            "from": "new",
            "to": "called",
            "on": "Call",
            "steps": [
                {
                    "id": "call",
                    "action": "ledgerflow.http_request",
                    "params": {"url": {"expr": "payload.url"}, "json": {"expr": "payload.body"}},
                }
            ],
        }
    ],
}


class Service(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"null")
        Service.seen.append(
            {"path": self.path, "key": self.headers.get("Idempotency-Key"), "body": body}
        )
        status = 500 if self.path == "/broken" else 201
        answer = {"ok": status == 201, **({"ratio": float("nan")} if self.path == "/nan" else {})}
        payload = json.dumps(answer).encode()  # NaN written as Python writes it
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    Service.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def caller(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(f"sqlite:///{tmp_path}/http.db")
    engine.store.upgrade()
    engine.register(definitions.compile_workflow(definitions.parse(WORKFLOW)))
    yield engine
    engine.close()


def call(engine: Engine, url: str) -> tuple[str, str, list[Any]]:
    execution_id = engine.create_execution("Caller", tenant="acme")
    event_id = engine.enqueue_event(
        execution_id, "Call", tenant="acme", payload={"url": url, "body": {"n": 1}}
    )
    Worker(engine, poll_interval=0.01).run_once()
    outcomes = [
        h.record for h in engine.history(execution_id, tenant="acme") if h.kind.startswith("step_")
    ]
    return execution_id, event_id, outcomes


def test_the_request_carries_the_idempotency_key_and_its_answer_is_the_result(
    caller: Engine, service: str
) -> None:
    execution_id, event_id, outcomes = call(caller, f"{service}/orders")
    assert Service.seen == [
        {"path": "/orders", "key": f"{execution_id}:{event_id}:call", "body": {"n": 1}}
    ]
    assert outcomes[0].result == {"status": 201, "body": {"ok": True}}


def test_an_error_status_fails_the_step(caller: Engine, service: str) -> None:
    _, _, outcomes = call(caller, f"{service}/broken")
    assert outcomes[0].kind == "step_failed"
    assert "500" in outcomes[0].error


def test_an_unreachable_service_fails_the_step(caller: Engine) -> None:
    _, _, outcomes = call(caller, "http://127.0.0.1:9/nothing-listens-here")
    assert outcomes[0].kind == "step_failed"
    assert "ConnectError" in outcomes[0].error


def test_a_body_with_nan_is_kept_as_text(caller: Engine, service: str) -> None:
    """NaN is not JSON (Python's parser takes it; the ledger cannot store it): such a body is
    the step's result as text, and the step succeeds."""
    _, _, outcomes = call(caller, f"{service}/nan")
    assert outcomes[0].kind == "step_succeeded"
    assert outcomes[0].result == {"status": 201, "body": '{"ok": true, "ratio": NaN}'}
