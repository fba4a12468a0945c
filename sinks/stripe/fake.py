"""The Stripe fake of the local stack: a loopback HTTP server.

So far it answers health checks and refuses every API call the way Stripe refuses an unknown
URL; the faithful fake (meter events, idempotency replay, rate limits, faults) comes with the
Stripe sink. Run: python -m sinks.stripe.fake --port N
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server_version = "meterline-stripe-fake"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"ok": True, "service": "stripe-fake"})
        else:
            self._unknown()

    def do_POST(self) -> None:
        self._unknown()

    do_DELETE = do_POST

    def _unknown(self) -> None:
        self._reply(
            404,
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Unrecognized request URL ({self.command}: {self.path}).",
                }
            },
        )

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the dev stack logs to a file
        pass


def serve(host: str, port: int) -> None:
    with ThreadingHTTPServer((host, port), _Handler) as server:
        server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
