"""A time-stamp authority (RFC 3161) on loopback for the tests: ``openssl ts -reply`` behind HTTP.

:func:`local_tsa` makes the authority's key and certificate (extended key
usage timeStamping, as RFC 3161 requires), writes OpenSSL's TSA
configuration, and serves ``POST /`` with ``application/timestamp-query``
bodies on a free port, answering what ``openssl ts -reply`` answers. No
network: the exchange's code talks to it exactly as to a real authority.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_CONFIG = """
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
dir = {directory}
serial = {directory}/serial
crypto_device = builtin
signer_cert = {directory}/tsa.cert.pem
certs = {directory}/tsa.cert.pem
signer_key = {directory}/tsa.key.pem
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


@dataclass(frozen=True)
class LocalTsa:
    """A running authority: where to ask it, and its certificate (PEM file)."""

    url: str
    certificate: Path
    requests: list[bytes]


def make_tsa_certificate(directory: Path, name: str = "lienthong test TSA") -> Path:
    """A self-signed time-stamping key and certificate in ``directory``; returns the cert."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(directory / "tsa.key.pem"),
            "-out",
            str(directory / "tsa.cert.pem"),
            "-days",
            "30",
            "-subj",
            f"/CN={name}",
            "-addext",
            "extendedKeyUsage=critical,timeStamping",
            "-addext",
            "keyUsage=critical,digitalSignature",
        ],
        check=True,
        capture_output=True,
    )
    return directory / "tsa.cert.pem"


@contextlib.contextmanager
def local_tsa(directory: Path) -> Iterator[LocalTsa]:
    """Run an authority from ``directory`` until the block ends."""
    certificate = make_tsa_certificate(directory)
    (directory / "serial").write_text("01\n")
    config = directory / "tsa.cnf"
    config.write_text(_CONFIG.format(directory=directory))
    requests: list[bytes] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the protocol's method name
            query = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            requests.append(query)
            with lock, tempfile.TemporaryDirectory() as work:
                (Path(work) / "query.tsq").write_bytes(query)
                done = subprocess.run(
                    [
                        "openssl",
                        "ts",
                        "-reply",
                        "-config",
                        str(config),
                        "-queryfile",
                        str(Path(work) / "query.tsq"),
                        "-out",
                        str(Path(work) / "reply.tsr"),
                    ],
                    capture_output=True,
                    check=False,
                )
                if done.returncode != 0:
                    self.send_error(500, done.stderr.decode(errors="replace")[:200])
                    return
                reply = (Path(work) / "reply.tsr").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalTsa(f"http://127.0.0.1:{server.server_address[1]}/", certificate, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
