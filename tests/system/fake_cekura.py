"""A fake Cekura for the secret and masking attacks: an HTTP server on loopback that answers every request with what
its `script` returns, so a test can make Cekura echo a secret anywhere it likes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: (method, path, lower-cased headers, body) -> (status, extra headers, body)
Script = Callable[[str, str, dict[str, str], bytes], tuple[int, list[tuple[str, str]], bytes]]


class FakeCekura:
    def __init__(self) -> None:
        self.script: Script = lambda *_: (500, [], b"{}")
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, out = fake.script(self.command, self.path, headers, body)
                self.send_response(status)
                for name, value in extra:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def json_reply(status: int, value: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """A script's answer: `value` as a JSON body with `status`."""
    return status, [("Content-Type", "application/json")], json.dumps(value).encode()
