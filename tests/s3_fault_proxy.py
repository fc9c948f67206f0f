"""A small fault-injecting HTTP proxy in front of the moto S3 server (127.0.0.1 only).

Production code talks to it with an unpatched boto3 client, so the faults it injects are the
ones botocore really sees from S3: an error status with an S3 XML body (403 AccessDenied,
500/503), a dropped connection, a slow answer.

    with FaultProxy(s3_server) as proxy:
        proxy.rule = lambda method, path: 403 if method == "GET" and "step_" in path else None
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)

``rule(method, path)`` returns None (forward), an int status, ``"reset"`` (close the socket
without answering), ``("slow", seconds)`` (forward after a delay) or ``("cut", nbytes)``
(forward, then answer with the full headers but only the first ``nbytes`` of the body and
drop the connection: a transfer broken mid-object). ``proxy.log`` records every request as
``(method, path, action)``, ``proxy.headers`` the request headers of each, in the same order.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "SlowDown"}


class FaultProxy:
    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.rule: Callable[[str, str], Any] = lambda method, path: None
        self.log: list[tuple[str, str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._log_lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy.rule(self.command, self.path)
                with proxy._log_lock:  # log[i] and headers[i] are the same request
                    proxy.log.append((self.command, self.path, action))
                    proxy.headers.append(dict(self.headers.items()))
                if action == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, int):
                    code = _CODES.get(action, "InternalError")
                    xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                           f"<Message>injected by FaultProxy</Message></Error>").encode()
                    self.send_response(action)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                if isinstance(action, tuple) and action[0] == "slow":
                    time.sleep(action[1])
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD answer has no body but the object's length (what size() reads).
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if isinstance(action, tuple) and action[0] == "cut":
                    self.wfile.write(data[:action[1]])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "FaultProxy":
        # A short poll interval: shutdown() waits for it (the default 0.5 s, in every test).
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
