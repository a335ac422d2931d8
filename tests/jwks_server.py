"""An identity provider's JWKS on a loopback HTTP server, for the read API's token tests
(unit: kc_tasks/web/auth.py alone; end to end: through the web process)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class JWKS:
    """An identity provider's key set on a loopback HTTP server of this process; keys can be
    added (rotation)."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def add(self, kid: str, private_key: Any, alg: str | None = None) -> None:
        public = private_key.public_key()
        algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(public))
        jwk.update(kid=kid, use="sig")
        if alg:
            jwk["alg"] = alg
        self.keys.append(jwk)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
