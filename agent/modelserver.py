"""A stand-in model server speaking TensorFlow Serving's REST API over the tiny models in agent.models.

Paths and JSON shapes follow TF-Serving (https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/{name}[/versions/{v}]            model status
    GET  /v1/models/{name}[/versions/{v}]/metadata   signature
    POST /v1/models/{name}[/versions/{v}]:predict    {"instances": [...]} or {"inputs": ...}

Errors are ``{"error": "..."}`` with TF-Serving's status codes (400 invalid argument, 404 not found).
Runs as a process (``python -m agent.modelserver --model half_plus_two --port 8501``) for the
ProcessRuntime, and inside the stand-in Docker image (images/modelserver) for the DockerRuntime.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.models import MODELS, ModelInputError, TinyModel

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024 * 1024
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<rest>/metadata|:predict)?$")


class ModelServer(ThreadingHTTPServer):
    """Serves one model (version 1) on (host, port)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], model: TinyModel, version: str = "1", name: str = "") -> None:
        super().__init__(address, _Handler)
        self.model = model
        self.name = name or model.name
        self.version = version


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # without it keep-alive requests wait ~40 ms (Nagle + delayed ACK)
    server_version = "peerserve-modelserver/1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        match = self._route()
        if match is None:
            return
        rest = match.group("rest")
        if rest == ":predict":
            self._send(405, {"error": "Method Not Allowed: use POST for :predict"})
        elif rest == "/metadata":
            self._send(200, self._metadata())
        else:
            self._send(200, self._status())

    def do_POST(self) -> None:
        match = self._route()
        if match is None:
            return
        if match.group("rest") != ":predict":
            self._send(405, {"error": "Method Not Allowed: POST is for :predict"})
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._send(411, {"error": "Content-Length is required"})
            return
        if int(length) > MAX_BODY:
            self._send(413, {"error": f"request body over {MAX_BODY} bytes"})
            self.close_connection = True
            return
        body = self.rfile.read(int(length))
        try:
            request = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._send(400, {"error": f"JSON Parse error: {exc}"})
            return
        try:
            self._send(200, self._predict(request))
        except ModelInputError as exc:
            self._send(400, {"error": str(exc)})

    def _route(self) -> re.Match[str] | None:
        path = self.path.split("?", 1)[0]
        match = _PATH.match(path)
        if match is None:
            self._send(404, {"error": f"Malformed request: {self.command} {path}"})
            return None
        name, version = match.group("name"), match.group("version")
        if name != self.server.name:
            self._send(404, {"error": f"Servable not found for request: Latest({name})"})
            return None
        if version is not None and version != self.server.version:
            self._send(404, {"error": f"Servable not found for request: Specific({name}, {version})"})
            return None
        return match

    def _status(self) -> dict[str, Any]:
        return {
            "model_version_status": [
                {
                    "version": self.server.version,
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }

    def _metadata(self) -> dict[str, Any]:
        m = self.server.model

        def tensor(name: str, shape: tuple[int, ...]) -> dict[str, Any]:
            dims = [{"size": str(d), "name": ""} for d in shape]
            return {"dtype": "DT_FLOAT", "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}

        signature = {
            "inputs": {"x": tensor("x:0", m.input_shape)},
            "outputs": {"y": tensor("y:0", m.output_shape)},
            "method_name": "tensorflow/serving/predict",
        }
        return {
            "model_spec": {"name": self.server.name, "signature_name": "", "version": self.server.version},
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
        }

    def _predict(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise ModelInputError("the request body must be a JSON object")
        run = self.server.model.run
        if "instances" in request:
            instances = request["instances"]
            if not isinstance(instances, list):
                raise ModelInputError("'instances' must be a list")
            return {"predictions": [run(x) for x in instances]}
        if "inputs" in request:
            inputs = request["inputs"]
            if isinstance(inputs, dict):
                if len(inputs) != 1:
                    raise ModelInputError("this model has one input tensor")
                inputs = next(iter(inputs.values()))
            if isinstance(inputs, list):
                return {"outputs": [run(x) for x in inputs]}
            return {"outputs": run(inputs)}
        raise ModelInputError("Missing 'inputs' or 'instances' key")

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(model: str, host: str, port: int, name: str = "") -> ModelServer:
    """Start a server in a background thread and return it (``shutdown()`` stops it)."""
    server = ModelServer((host, port), MODELS[model], name=name)
    threading.Thread(target=server.serve_forever, name=f"modelserver-{model}", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="peerserve-modelserver",
        description="Stand-in TF-Serving REST server for one tiny model (see agent.models).",
    )
    ap.add_argument(
        "--model",
        default=os.environ.get("PEERSERVE_STAND_IN") or os.environ.get("MODEL_NAME"),
        choices=sorted(MODELS),
        help="tiny model to run (default: $PEERSERVE_STAND_IN, else $MODEL_NAME)",
    )
    ap.add_argument(
        "--name",
        default=os.environ.get("MODEL_NAME", ""),
        help="name to serve it under, as TF-Serving's MODEL_NAME (default: $MODEL_NAME, else the model)",
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8501, help="REST port (default 8501, as TF-Serving)")
    args = ap.parse_args(argv)
    if not args.model:
        ap.error("--model is required (or set PEERSERVE_STAND_IN)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = ModelServer((args.host, args.port), MODELS[args.model], name=args.name)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("serving %s as %s on http://%s:%d", args.model, server.name, args.host, server.server_address[1])
    print(f"READY {server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
