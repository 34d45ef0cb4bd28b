"""The baseline for the endpoint-query benchmark: a bare FastAPI endpoint returning constant JSON."""

from fastapi import FastAPI

app = FastAPI()
BODY = {"model": "half_plus_two", "node": "n1", "url": "http://127.0.0.1:8501", "why": {"estimated_ms": 2.0}}


@app.get("/services/{model}")
async def service(model: str) -> dict[str, object]:
    return BODY
