"""A real Triton Inference Server (process runtime) and the digits model over both protocols via an agent.

Needs the tritonserver of the nvidia-pytriton wheel and the built digits weights (scripts/bootstrap.sh
installs and builds both); tritonclient.http is the real client, used with its defaults (binary tensors).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service.conftest import PLAIN

np = pytest.importorskip("numpy")
pytest.importorskip("sklearn")
httpclient = pytest.importorskip("tritonclient.http")


def _wait_200(send: Any, timeout: float = 90.0) -> httpx.Response:
    """Retry while the model is being provisioned (503 + Retry-After)."""
    deadline = time.monotonic() + timeout
    while True:
        r = send()
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(0.5)


def log_tail(path: Path, limit: int = 2000) -> str:
    """A Triton log for an assertion's message: its errors and warnings and what model.py logged (which numpy, from
    where), then its end (the start-up tables fill the end of a log of a server that did start)."""
    try:
        text = path.read_bytes().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    notes = [line for line in text.splitlines() if "model.py" in line or line.startswith(("E1", "W1", "error"))]
    return "\n".join(notes[-20:]) + "\n...\n" + text[-limit:]


def said(answer: httpx.Response, log: Path) -> str:
    """An answer as the next failure should show it: status, headers, body length and start, the server's log."""
    head = f"{answer.request.method} {answer.request.url} -> {answer.status_code} {dict(answer.headers)}"
    return f"{head}, {len(answer.content)} bytes: {answer.content[:600]!r}\n--- Triton's log ---\n{log_tail(log)}"


def binary_infer(url: str, model: str, rows: list[list[float]], timeout: float = 30) -> httpx.Response:
    """An infer with the binary tensor extension both ways, as tritonclient.http sends it by default."""
    data = np.asarray(rows, dtype=np.float32).tobytes()
    header = json.dumps({
        "inputs": [{"name": "pixels", "shape": [len(rows), 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return PLAIN.post(f"{url}/v2/models/{model}/infer", content=header + data, headers=headers, timeout=timeout)


def binary_output(answer: httpx.Response) -> Any:
    """The one output of a binary answer as an array (its JSON header says its shape and byte size)."""
    length = int(answer.headers["inference-header-content-length"])
    [output] = json.loads(answer.content[:length])["outputs"]
    size = output["parameters"]["binary_data_size"]
    assert len(answer.content) == length + size, (length, size, len(answer.content))
    return np.frombuffer(answer.content[length:], dtype=np.float32).reshape(output["shape"])


def test_digits_over_tf_serving_and_triton_through_an_agent(agents: Any) -> None:
    from agent import digits
    from agent.runtime.triton import find_triton

    find_triton()  # a missing install fails here with the reason
    images, labels = digits.heldout_set()
    a = agents("a", "--provision-wait-s", "60")
    # Open Inference Protocol at the agent's root, for a model no server runs yet: provisions Triton.
    triton_log = a.data_dir / "logs" / "digits_triton.log"
    ready = _wait_200(lambda: PLAIN.get(a.url + "/v2/models/digits_triton/ready", timeout=90))
    assert ready.status_code == 200, said(ready, triton_log)
    host = urlsplit(a.url).netloc
    with httpclient.InferenceServerClient(host) as triton:  # the real client, its defaults
        assert triton.is_server_live() and triton.is_server_ready()
        meta = triton.get_model_metadata("digits_triton")
        assert [i["name"] for i in meta["inputs"]] == ["pixels"]
        assert [o["name"] for o in meta["outputs"]] == ["probabilities"]
        pixels = httpclient.InferInput("pixels", [len(images), 64], "FP32")
        pixels.set_data_from_numpy(np.asarray(images, dtype=np.float32))  # binary tensor extension
        result = triton.infer("digits_triton", [pixels])
        # its header says how many bytes came (0: session 17's flake, a venv's numpy 2 in the backend stub)
        [output] = result.get_response()["outputs"]
        sent = output.get("parameters", {}).get("binary_data_size")
        again = binary_infer  # on failure: the same request again, raw, and Triton's log
        assert sent == len(images) * 10 * 4, (output, said(again(a.url, "digits_triton", images), triton_log))
        triton_probs = result.as_numpy("probabilities")
    assert triton_probs.shape == (len(images), 10)
    triton_classes = triton_probs.argmax(axis=1)
    # TF-Serving REST at the root, same weights through the stand-in.
    r = _wait_200(lambda: PLAIN.post(a.url + "/v1/models/digits:predict", json={"instances": images}, timeout=90))
    assert r.status_code == 200, r.text
    tf_classes = np.asarray(r.json()["predictions"]).argmax(axis=1)
    truth = np.asarray(labels)
    assert (triton_classes == truth).mean() >= 0.9
    assert (tf_classes == truth).mean() >= 0.9
    assert (tf_classes == triton_classes).mean() >= 0.98
    # The whole data set, padded to 2,000 rows: Triton's batch takes it in one request, the stand-in in two (at most
    # MAX_VALUES = 65,536 values a request, 1,024 rows of 64: its memory budget); the servers agree.
    from sklearn.datasets import load_digits

    from agent.serving.tfrest import MAX_VALUES

    everything = load_digits().data.astype(float).tolist()
    batch = (everything * 2)[:2000]
    halves = [PLAIN.post(a.url + "/v1/models/digits:predict", json={"instances": part}, timeout=90)
              for part in (batch[:1000], batch[1000:])]  # fmt: skip
    assert [h.status_code for h in halves] == [200, 200]
    tf_all = np.asarray(halves[0].json()["predictions"] + halves[1].json()["predictions"]).argmax(axis=1)
    v2 = {"inputs": [{"name": "pixels", "shape": [2000, 64], "datatype": "FP32", "data": batch}]}
    r2 = PLAIN.post(a.url + "/v2/models/digits_triton/infer", json=v2, timeout=90)
    triton_all = np.asarray(r2.json()["outputs"][0]["data"]).reshape(2000, 10).argmax(axis=1)
    assert r2.status_code == 200 and (tf_all == triton_all).mean() >= 0.98
    whole = PLAIN.post(a.url + "/v1/models/digits:predict", json={"instances": batch}, timeout=90)
    assert whole.status_code == 400 and str(MAX_VALUES) in whole.json()["error"]  # past the stand-in's bound: said
    # Each protocol is refused, in its own error shape, for the other kind of server.
    wrong = PLAIN.post(a.url + "/v1/models/digits_triton:predict", json={"instances": images[:1]}, timeout=30)
    assert wrong.status_code == 400 and set(wrong.json()) == {"error"}
    assert wrong.headers["x-peerserve-error"] == "wrong_protocol"
    unknown = PLAIN.post(a.url + "/v2/models/nope/infer", json={"inputs": []}, timeout=30)
    assert unknown.status_code == 400 and unknown.json() == {"error": "Request for unknown model: 'nope' is not found"}
    # Triton's own errors pass through unchanged.
    bad = PLAIN.post(a.url + "/v2/models/digits_triton/infer", json={"inputs": [
        {"name": "pixels", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}, timeout=30)  # fmt: skip
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
    # ... those it sends as text/plain too: its message, not wrapped again (review12d F3).
    records = json.loads((a.data_dir / "process-runtime.json").read_text())
    [record] = [x for x in records if x["model"] == "digits_triton"]
    odd = {"Inference-Header-Content-Length": "999", "Content-Type": "application/octet-stream"}
    direct = PLAIN.post(f"http://127.0.0.1:{record['port']}/v2/models/digits_triton/infer", content=b"{}",
                        headers=odd, timeout=30)  # fmt: skip
    proxied = PLAIN.post(a.url + "/v2/models/digits_triton/infer", content=b"{}", headers=odd, timeout=30)
    assert direct.status_code == proxied.status_code == 400 and "json" not in direct.headers["content-type"]
    assert proxied.json() == json.loads(direct.text) and "999" in proxied.json()["error"]
    # One Date and one Server on proxied answers, Triton's and the stand-in's alike (review12d F4).
    for answer in (r, r2, proxied):
        assert len(answer.headers.get_list("date")) == 1 and len(answer.headers.get_list("server")) == 1
    assert "server-timing" in r.headers and r.headers["x-peerserve-node"] == r2.headers["x-peerserve-node"]
    # Memory of the Triton server is measured (its process tree), and its execution time is recorded.
    [inst] = [i for i in a.get("/stats/node").json()["instances"] if i["model"] == "digits_triton"]
    assert inst["ready"] and inst["mem_mb"] is not None and inst["mem_mb"] > 10
    # The client library and CLI speak the Open Inference Protocol too (direct to Triton, and via the proxy).
    from client import Client
    from tests.service.test_client import cli

    v2_inputs = [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": images[:2]}]
    with Client(agents=[a.url], transport=httpx.HTTPTransport(retries=1)) as c:
        direct = c.infer("digits_triton", v2_inputs)
        proxied = c.infer("digits_triton", v2_inputs, via_proxy=True)
    assert direct["outputs"][0]["shape"] == [2, 10] and direct["outputs"] == proxied["outputs"]
    out = cli("predict", "digits_triton", "--protocol", "v2", "--data", json.dumps(v2_inputs), "--agent", a.url)
    assert out.returncode == 0 and json.loads(out.stdout)["outputs"][0]["name"] == "probabilities", out.stderr
    log = a.get("/stats/requests?since=0").json()["requests"]
    timed = [x for x in log if x["model"] in ("digits", "digits_triton") and x["latency_ms"] is not None]
    assert {x["model"] for x in timed} == {"digits", "digits_triton"}
    assert all(x["latency_ms"] > 0 for x in timed)
    # ... and it is the execution time the placement snapshot uses (the catalogue's guess is 3 ms).
    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.placement import MIN_LATENCY_SAMPLES, build_snapshot, parse_node_report, parse_request

    for _ in range(MIN_LATENCY_SAMPLES):
        PLAIN.post(a.url + "/v1/models/digits:predict", json={"instances": images}, timeout=90).raise_for_status()
    rows = [parse_request(x) for x in a.get("/stats/requests?since=0").json()["requests"]]
    node = parse_node_report(a.get("/stats/node").json(), a.get("/stats/models").json())
    snapshot = build_snapshot([node], rows, parse_catalogue(builtin_catalogue_text(), "built-in"), time.time())
    measured = sorted(
        r.latency_ms for r in rows if r.model == "digits" and r.latency_ms is not None and r.status == 200
    )
    [digits_request] = [r for r in snapshot["requests"] if r["model"] == "digits"]
    # ... or its server's own mean where that is slower (the node's word, taken only where it is: its two 1,000-row
    # predicts weigh in a mean, not in the median of the proxied times)
    served, own_ms = node.service.get("digits", (0, 0.0))
    expected = max(float(np.median(measured)), own_ms if served >= MIN_LATENCY_SAMPLES else 0.0)
    assert digits_request["exec_ms"][node.node_id] == pytest.approx(expected)
    assert digits_request["exec_ms"][node.node_id] > 3.0


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: exited, not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def wait_ready(c: httpx.AsyncClient, base: str, data_dir: Path, log: Path, timeout: float = 90.0) -> None:
    """Until ``base``/ready answers 200; fails at once, with the server's log, when the server has exited (a model
    that does not load ends it: "failed to load all models"). Reads the runtime's record for its pid rather than
    asking the runtime (its list() cuts the log, which the admin test measures)."""
    [record] = [x for x in json.loads((data_dir / "process-runtime.json").read_text()) if x["model"] == "digits_triton"]
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if (await c.get(f"{base}/ready")).status_code == 200:
                return
        assert alive(record["pid"]), f"the server exited\n--- Triton's log ---\n{log_tail(log)}"
        assert time.monotonic() < deadline, f"not ready in {timeout:g} s\n--- Triton's log ---\n{log_tail(log)}"
        await asyncio.sleep(0.3)


def test_tritons_admin_apis_answer_403_and_its_log_stays_bounded(tmp_path: Path) -> None:
    """review12d F1: a stranger on Triton's port (published in /services) set its log verbosity to 3 (~2 KB an
    infer into a log never rotated), registered system shared memory (model outputs written into /dev/shm),
    changed trace settings. Those APIs are restricted to a key nobody holds; probes, infer and stats stay open.
    The process runtime cuts a server's log past its bound in place (here 2 KiB: Triton's start-up writes ~9 KB)."""
    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.runtime.process import ProcessRuntime
    from agent.runtime.triton import ADMIN_HEADER, find_triton
    from agent.serving.server_scrape import ServerScraper

    find_triton()
    spec = parse_catalogue(builtin_catalogue_text(), "builtin").get("digits_triton")
    assert spec is not None
    log = tmp_path / "logs" / "digits_triton.log"
    v2 = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}

    async def main() -> None:
        runtime = ProcessRuntime("127.0.0.1", tmp_path, log_max_bytes=2048)
        instance = await runtime.start(spec, term=1)
        try:
            base = f"{instance.url}/v2/models/digits_triton"
            async with httpx.AsyncClient(timeout=10) as c:
                await wait_ready(c, base, tmp_path, log)
                for answer in (await c.post(f"{base}/infer", json=v2), await c.get(f"{base}/stats"), await c.get(base)):
                    assert answer.status_code == 200, said(answer, log)
                for method, path, body in [
                    ("POST", "/v2/logging", {"log_verbose_level": 3}),
                    ("GET", "/v2/logging", None),
                    ("GET", "/v2/systemsharedmemory/status", None),
                    ("GET", "/v2/cudasharedmemory/status", None),
                    ("POST", "/v2/systemsharedmemory/region/r/register", {"key": "/x", "offset": 0, "byte_size": 64}),
                    ("POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
                    ("POST", "/v2/repository/index", {}),
                    ("POST", "/v2/repository/models/digits_triton/unload", {}),
                ]:
                    for headers in ({}, {ADMIN_HEADER: "guess"}):
                        answer = await c.request(method, instance.url + path, json=body, headers=headers)
                        assert answer.status_code == 403, (path, answer.status_code, answer.text)
                assert (await c.get(f"{base}/ready")).status_code == 200  # still loaded, log verbosity unchanged
                grown = log.stat().st_size
                scraper = ServerScraper(c, 600.0)  # its statistics extension: the node's own service figure
                await scraper.scrape_once([instance], lambda _model: "triton")
                # what it served since it started (its counters were zero then: the window's base), warm-up included
                first = scraper.figures().get("digits_triton")
                earlier = first.requests if first is not None else 0
                for _ in range(20):
                    answer = await c.post(f"{base}/infer", json=v2)
                    assert answer.status_code == 200, said(answer, log)
                assert log.stat().st_size == grown  # at the default verbosity an infer logs nothing
                for _ in range(50):  # Triton counts a request once it is done with it: at most a moment after
                    await asyncio.sleep(0.1)
                    await scraper.scrape_once([instance], lambda _model: "triton")
                    figure = scraper.figures().get("digits_triton")
                    if figure is not None and figure.requests >= earlier + 20:
                        break
                assert figure is not None
                assert figure.requests == earlier + 20 and 0 < figure.service_ms < 1000 and scraper.errors == 0
            assert grown > 2048  # start-up alone passed the bound ...
            await runtime.list()  # ... and the next round (every reconcile) cut it
            assert log.stat().st_size == 0
            assert (tmp_path / "logs" / "digits_triton.log.1").stat().st_size == 2048
        finally:
            await runtime.close()  # Triton logs its shutdown: into the cut file, from its start

    asyncio.run(main())
    after = log.read_bytes()
    assert after.startswith(b"Signal (15) received.") and b"\0" not in after


@pytest.mark.parametrize("where", ["a venv first on PATH", "a numpy in the working directory", "a relative data dir"])
def test_triton_serves_whatever_python_the_agent_runs_from(where: str, tmp_path: Path, monkeypatch: Any) -> None:
    """Session 17's flake: an agent started with a virtual environment's bin first on PATH (an activated venv, numpy 2
    in it) had every Triton output empty -- tritonclient "cannot reshape array of size 0 into shape (450,10)", a JSON
    infer 500. The backend stub's interpreter takes the first python3 on PATH for itself (that venv's site-packages
    then came before the stub's numpy 1) and imports from its working directory first. The server now gets the
    system's PATH and a working directory of its own, and model.py takes numpy only from the stub's own site."""
    from agent import digits
    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.runtime.process import ProcessRuntime
    from agent.runtime.triton import find_triton, stub_site_packages

    find_triton()
    if where == "a venv first on PATH":  # the interpreter running the tests: a venv with the agent's numpy
        monkeypatch.setenv("PATH", f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}")
    elif where == "a relative data dir":  # review18b F1: tritonserver runs in data/triton, so its command line's
        monkeypatch.chdir(tmp_path)  # paths must not be relative to where the agent was started
    else:  # a numpy that cannot be imported where the agent was started
        cwd = tmp_path / "cwd"
        (cwd / "numpy").mkdir(parents=True)
        (cwd / "numpy" / "__init__.py").write_text("raise ImportError('numpy from the working directory')\n")
        monkeypatch.chdir(cwd)
    spec = parse_catalogue(builtin_catalogue_text(), "builtin").get("digits_triton")
    assert spec is not None
    rows = digits.heldout_set()[0][:3]
    weights = digits.load_weights()
    expected = np.asarray([weights.probabilities(row) for row in rows])
    data = tmp_path / "data"
    data.mkdir()
    log = data / "logs" / "digits_triton.log"

    async def main() -> None:
        runtime = ProcessRuntime("127.0.0.1", Path("data") if where == "a relative data dir" else data)
        instance = await runtime.start(spec, term=1)
        try:
            async with httpx.AsyncClient(timeout=10) as c:
                await wait_ready(c, f"{instance.url}/v2/models/digits_triton", data, log)
            v2 = {"inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32", "data": rows}]}
            answer = await asyncio.to_thread(
                httpx.post, f"{instance.url}/v2/models/digits_triton/infer", json=v2, timeout=30)  # fmt: skip
            assert answer.status_code == 200, said(answer, log)
            [output] = answer.json()["outputs"]
            assert output["shape"] == [3, 10], said(answer, log)
            assert np.asarray(output["data"]).reshape(3, 10) == pytest.approx(expected, abs=1e-5)
            raw = await asyncio.to_thread(binary_infer, instance.url, "digits_triton", rows)
            assert raw.status_code == 200, said(raw, log)
            assert binary_output(raw) == pytest.approx(expected, abs=1e-5), said(raw, log)
        finally:
            await runtime.close()

    asyncio.run(main())
    assert "numpy 1." in log.read_text() and f"from {stub_site_packages()}" in log.read_text(), log_tail(log)


STAY = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"


def test_a_stop_ends_the_stub_its_server_left_and_nothing_in_another_session(tmp_path: Path) -> None:
    """review18b F4: stop() sweeps the stopped server's session. Its real backend stub, stopped (SIGSTOP: it can
    neither exit nor clean up on its own, as a stub left by a stop during load never does) and orphaned (the server
    killed: it can neither end the stub nor remove its region), is gone at once after ``runtime.stop()`` with the
    /dev/shm region it named; a process in another live session whose argv reads as a
    stub's (spoofed: exec -a) is left alone, checked while it is still alive."""
    import subprocess

    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.runtime.process import STUB_NAME, STUB_SHM_PREFIX, ProcessRuntime, session_members
    from agent.runtime.triton import find_triton

    find_triton()
    spec = parse_catalogue(builtin_catalogue_text(), "builtin").get("digits_triton")
    assert spec is not None
    stub = tmp_path / "triton" / "backends" / "python" / STUB_NAME
    log = tmp_path / "logs" / "digits_triton.log"

    def stubs(session: int) -> list[tuple[int, list[str]]]:
        found = []
        for pid, argv in session_members(session):
            with contextlib.suppress(OSError):
                if pid != session and os.readlink(f"/proc/{pid}/exe") == str(stub.resolve()):
                    found.append((pid, argv))
        return found

    async def main() -> None:
        runtime = ProcessRuntime("127.0.0.1", tmp_path)
        instance = await runtime.start(spec, term=1)
        server = int(instance.detail.split()[1])
        decoy = None
        try:
            async with httpx.AsyncClient(timeout=10) as c:
                await wait_ready(c, f"{instance.url}/v2/models/digits_triton", tmp_path, log)
            [(stub_pid, argv)] = stubs(server)
            regions = [a for a in argv if a.startswith(STUB_SHM_PREFIX)]
            assert regions and all((Path("/dev/shm") / r).exists() for r in regions), argv
            os.kill(stub_pid, signal.SIGSTOP)  # ours: the stub of the server this test started
            # and the server gone at once, as one stopped while it loads exits (a server that shuts down in order
            # kills a stub that does not answer it: measured, the stub did not outlive runtime.stop() without a sweep)
            os.kill(server, signal.SIGKILL)
            decoy = subprocess.Popen(  # another session, argv as a stub's naming this stub's region
                ["bash", "-c", f'exec -a "{stub}" "{sys.executable}" -c "{STAY}" {regions[0]}'],
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while Path(f"/proc/{decoy.pid}/cmdline").read_bytes().split(b"\0")[0] != str(stub).encode():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await runtime.stop(instance.id)
            assert decoy.poll() is None and alive(decoy.pid)  # another session: untouched
            deadline = time.monotonic() + 5
            while any(alive(pid) for pid, _ in session_members(server)):  # a killed member is reaped by init
                assert time.monotonic() < deadline, session_members(server)
                await asyncio.sleep(0.05)
            assert not alive(stub_pid)
            assert not any((Path("/dev/shm") / r).exists() for r in regions)
        finally:
            if decoy is not None:
                decoy.kill()
                decoy.wait()
            await runtime.close()

    asyncio.run(main())
