"""Watchers on real ASGI servers (daphne and uvicorn, as subprocesses) and real workers.

- A socket over ``MAX_WATCHERS`` is closed with 4503: daphne refused 1013 (the client saw
  1011, daphne logged a traceback) and ``watch.js`` then reconnected 6 times in about 14 s
  instead of polling at once.
- One token (or one client address) cannot hold every slot; a socket closes when its
  token expires.
- A client that never reads slows only itself: on uvicorn, the live task used to wait on
  each socket's send in turn, so an 8 MB result held every other watcher's updates.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from django_jobqueue.models import Job
from tests.conftest import ROOT, free_port, wait_until
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, sync_playwright
from tests.testapp.jobs import add, returns_bytes

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]

UVICORN = ["-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--lifespan", "off"]
SERVERS = {
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "tests.asgi:application"],
    # uvicorn's default WebSocket protocol (websockets' sans-I/O one): a send waits while the
    # previous one is still buffered.
    "uvicorn": [*UVICORN, "tests.asgi:application"],
    # Its older one, which waits within each send until the client took it.
    "uvicorn-websockets": [*UVICORN, "--ws", "websockets", "tests.asgi:application"],
}


class Server:
    """A real ASGI server on the test database, with ``JOBQUEUE`` overrides."""

    def __init__(self, kind: str, tmp_path: Path, jobqueue: dict[str, Any]) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = tmp_path / f"{kind}.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
            "DJQ_TEST_DB": connection.settings_dict["NAME"],
            "DJQ_JOBQUEUE": json.dumps(jobqueue),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        args = [part.format(port=self.port) for part in SERVERS[kind]]
        with self.log_path.open("w") as output:
            self.proc = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=env, stdout=output, stderr=output
            )
        wait_until(self._listening, timeout=30)

    def _listening(self) -> bool:
        assert self.proc.poll() is None, self.log()
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return self.log_path.read_text()

    def url(self, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/jobqueue/jobs/{token}/"

    def watch(self, token: str, address: str = "127.0.0.1") -> ClientConnection:
        """A client from ``address`` (any of 127.0.0.0/8: another user)."""
        sock = socket.socket()
        sock.bind((address, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        return connect(
            self.url(token), sock=sock, proxy=None, max_size=None, open_timeout=10, legacy=True
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request, tmp_path, transactional_db) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(**jobqueue: Any) -> Server:
        started.append(Server(request.param, tmp_path, jobqueue))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def state(client: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    return json.loads(client.recv(timeout=timeout))


def final_state(client: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    """The first state of a finished job ``client`` gets (a "running" one may come first)."""
    while (message := state(client, timeout))["status"] in ("queued", "running"):
        pass
    return message


def close_code(client: ClientConnection, timeout: float = 10) -> int:
    """The code the server closed ``client`` with (states sent before it are skipped)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            client.recv(timeout=max(0.01, deadline - time.monotonic()))
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, f"closed without a close frame: {closed}"
        return closed.rcvd.code


def token_of(handle, max_age: float = 600) -> str:
    return handle.watch_token(max_age=max_age)


# -- item 4: a full process closes with a code every server passes on ------------------------


def test_a_full_process_closes_new_sockets_with_4503(server):
    running = server(MAX_WATCHERS=1)
    handle = add.enqueue(1, 2)
    first = running.watch(token_of(handle))
    assert state(first)["status"] == "queued"
    refused = running.watch(token_of(handle, 601))
    assert close_code(refused) == 4503
    first.close()
    wait_until(lambda: "refused a watcher" in running.log(), timeout=10)
    assert "Traceback" not in running.log(), running.log()


# -- item 5: shares per token and per client address; expiry -----------------------------------


def test_one_token_or_one_address_cannot_take_every_slot(server, worker_processes):
    running = server(MAX_WATCHERS=50, MAX_WATCHERS_PER_TOKEN=2, MAX_WATCHERS_PER_CLIENT=3)
    handle = add.enqueue(2, 3)
    token_a, token_b = token_of(handle, 600), token_of(handle, 601)
    a1, a2 = running.watch(token_a), running.watch(token_a)
    assert state(a1)["status"] == state(a2)["status"] == "queued"
    assert close_code(running.watch(token_a)) == 4429  # the token's share
    b1 = running.watch(token_b)
    assert state(b1)["status"] == "queued"
    assert close_code(running.watch(token_b)) == 4429  # this address's share
    b2 = running.watch(token_b, address="127.0.0.2")  # another user has room
    assert state(b2)["status"] == "queued"
    # A socket does not outlive its token.
    short = running.watch(token_of(handle, 2), address="127.0.0.3")
    assert state(short)["status"] == "queued"
    assert close_code(short, timeout=10) == 4403
    worker_processes.start()
    for client in (a1, a2, b1, b2):
        assert final_state(client) == {"status": "completed", "progress": None, "result": 5}
        assert close_code(client) == 1000


# -- item 6: a client that never reads slows only itself -------------------------------------


def silent_client(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake, then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert b" 101 " in answer.split(b"\r\n")[0], answer
    return sock


@pytest.mark.parametrize("server", sorted(SERVERS), indirect=True)
def test_a_client_that_never_reads_stalls_no_one_else(server, worker_processes):
    big_result = {"MAX_RESULT_BYTES": 16 * 2**20}
    running = server(WATCHER_SEND_TIMEOUT=3, **big_result)
    # Sorted ids: the big job's state is passed on first when both are due in one read.
    big = returns_bytes.using(job_id="a-big").enqueue(8_000_000)
    small = add.using(job_id="b-small").enqueue(1, 1)
    silent = silent_client(running.port, f"/ws/jobqueue/jobs/{token_of(big)}/")
    victim = running.watch(token_of(small))
    assert state(victim)["status"] == "queued"
    worker_processes.start("--concurrency", "1", env={"DJQ_JOBQUEUE": json.dumps(big_result)})
    wait_until(lambda: Job.objects.get(job_id=small.id).status == "completed", timeout=60)
    completed_at = time.monotonic()
    assert final_state(victim)["result"] == 2
    waited = time.monotonic() - completed_at
    assert waited < 2.0, f"the victim's update waited {waited:.1f} s behind the silent client"
    if running.kind != "daphne":  # daphne buffers what a client does not read, unbounded
        wait_until(lambda: "took no state for 3s" in running.log(), timeout=30)
    silent.close()
    assert "Traceback" not in running.log(), running.log()


# -- item 4 in a browser: watch.js polls at once when the server is full ------------------------

WATCH = """([url]) => {
  window.opened = 0;
  const Real = window.WebSocket;
  window.WebSocket = function (address) { window.opened += 1; return new Real(address); };
  window.watcher = DjangoJobqueue.watch(url, {
    statusUrl: "/status/", pollInterval: 100, onDone(state) { window.done = state; },
  });
}"""


@pytest.mark.browser
@pytest.mark.skipif(sync_playwright is None, reason="needs playwright (pip install playwright)")
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Debian's chromium at {CHROMIUM}")
def test_watch_js_polls_at_once_when_the_server_is_full(server):
    running = server(MAX_WATCHERS=1)
    handle = add.enqueue(1, 2)
    holder = running.watch(token_of(handle))
    assert state(holder)["status"] == "queued"
    script = (ROOT / "django_jobqueue" / "static" / "django_jobqueue" / "watch.js").read_text()
    answer = json.dumps({"status": "completed", "progress": None, "result": 3})
    # Made here: inside sync_playwright() the thread runs an event loop, where Django refuses
    # the query that finds the run a token names.
    second = token_of(handle, 601)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            # A page of the server (its 404: the browser's checks want the socket to go to
            # the page's own address); the status view is answered here.
            origin = f"http://127.0.0.1:{running.port}"
            page.route(
                f"{origin}/status/",
                lambda route: route.fulfill(body=answer, content_type="application/json"),
            )
            page.goto(f"{origin}/a-page/")
            page.add_script_tag(content=script)
            page.evaluate(WATCH, [running.url(second)])
            page.wait_for_function("() => window.done", timeout=3000)  # reconnects took ~14 s
            assert page.evaluate("window.watcher.mode") == "polling"
            assert page.evaluate("window.opened") == 1
            assert page.evaluate("window.done.result") == 3
        finally:
            browser.close()
    holder.close()
