"""The cluster client's connections, as urllib3 pools them (the client's configuration: no
retries): a streamed answer let go half read (a followed log whose read timed out, a watch
left early) must not leave its connection to the next request, and one read to its end
keeps its connection for the next."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
import urllib3

from container_manager.executors.kubernetes_api import chunks, release


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hold: threading.Event

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/follow":  # a followed log: one line, then silence
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"6\r\nline1\n\r\n")
            self.wfile.flush()
            self.hold.wait(10)
            return
        body = b'{"kind": "Pod"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    hold = threading.Event()
    handler = type("Handler", (_Handler,), {"hold": hold})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        hold.set()
        httpd.shutdown()
        httpd.server_close()


def test_a_half_read_answer_let_go_does_not_break_the_next_request(server: str):
    pool = urllib3.PoolManager(maxsize=1, retries=False)
    followed = pool.request("GET", f"{server}/follow", preload_content=False)
    assert next(chunks(followed)) == b"line1\n"
    release(followed)  # the rest never came: the read gave up
    assert pool.request("GET", f"{server}/pod").data == b'{"kind": "Pod"}'


def test_an_answer_read_to_its_end_keeps_its_connection(server: str):
    pool = urllib3.PoolManager(maxsize=1, retries=False)
    for _ in range(3):
        answer = pool.request("GET", f"{server}/pod", preload_content=False)
        assert b"".join(chunks(answer)) == b'{"kind": "Pod"}'
        release(answer)
    assert pool.connection_from_url(server).num_connections == 1
