"""The unauthenticated-heartbeat baseline: a bare FastAPI app on plain HTTP answering fixed JSON bytes.

The bytes come from the file named by PEERSERVE_BENCH_PAYLOAD (the agent's own signed answer, captured).
"""

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI()
PAYLOAD = Path(os.environ.get("PEERSERVE_BENCH_PAYLOAD", "/dev/null")).read_bytes()


@app.get("/peer/state")
async def state() -> Response:
    return Response(PAYLOAD, media_type="application/json")
