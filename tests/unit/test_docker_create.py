"""What DockerRuntime creates, decided before any Engine call: the Triton command check, the digest (review12f F2)."""

from __future__ import annotations

import asyncio

import pytest

from agent.catalogue import ModelSpec
from agent.errors import InstanceStartError
from agent.runtime.docker import DockerLog, DockerRuntime, config_digest, restricted_apis, triton_command_refusal


def triton(command: tuple[str, ...] = ()) -> ModelSpec:
    return ModelSpec("digits", "peerserve/triton-digits:latest", "digits", "/models/digits", 1, 300, 5, {}, None,
                     command, server="triton")  # fmt: skip


def test_a_triton_command_without_the_admin_restriction_is_refused_before_docker_is_asked() -> None:
    open_admin = triton(("tritonserver", "--model-repository=/models"))
    assert "--http-restricted-api" in (triton_command_refusal(open_admin) or "")

    def no_engine() -> None:
        raise AssertionError("the Engine must not be asked")

    with pytest.raises(InstanceStartError, match="admin APIs"):
        asyncio.run(DockerRuntime("n1", "127.0.0.1", client_factory=no_engine).start(open_admin, term=1))
    kept = triton(("sh", "-c", "exec tritonserver --http-restricted-api=shared-memory,model-repository,logging,"
                   "trace:k=$(head -c8 /dev/urandom)"))  # fmt: skip
    assert triton_command_refusal(kept) is None
    assert triton_command_refusal(triton()) is None  # the image's CMD, which restricts them
    tf = ModelSpec("a", "img", "a", "/models/a", 1, 64, 5, {}, None, ("tensorflow_model_server",))
    assert triton_command_refusal(tf) is None


ALL = "shared-memory,model-repository,logging,trace"


@pytest.mark.parametrize(
    "command",
    [
        ("tritonserver", "--http-restricted-api=trace:k=v"),  # the flag named, three admin APIs open
        ("sh", "-c", "exec tritonserver --http-restricted-api=logging,trace:k=$(od -An -N16 /dev/urandom)"),
        ("tritonserver", f"--http-restricted-api={ALL}"),  # no key: Triton refuses it, it restricts nothing
        ("tritonserver", f"--http-restricted-api={ALL}:k"),
        ("tritonserver", f"--http-restricted-api={ALL}:=v"),
        ("tritonserver", "--model-repository=/models", "--http-restricted-api"),  # no value at all
        ("sh", "-c", "echo --http-restricted-api-was-here; exec tritonserver"),
        # review27c I1: the shell drops a comment, flag and all; an empty value is no key
        ("sh", "-c", f"exec tritonserver --model-repository=/m # --http-restricted-api={ALL}:k=v"),
        ("sh", "-c", f"exec tritonserver --model-repository=/m\n# --http-restricted-api={ALL}:k=v"),
        ("sh", "-c", f"exec tritonserver --model-repository=/m # --http-restricted-api={ALL}:k=v don't"),
        ("tritonserver", f"--http-restricted-api={ALL}:k="),
        ("tritonserver", "--http-restricted-api", f"{ALL}:k="),
    ],
)
def test_a_triton_command_must_restrict_every_admin_api_the_images_do(command: tuple[str, ...]) -> None:
    """review27b F6: the check looked for the flag's name in the joined command: ``--http-restricted-api=trace:k=v``
    passed while shared memory, the model repository and logging stayed open to anyone reaching the port."""
    assert "does not restrict" in (triton_command_refusal(triton(command)) or "")


@pytest.mark.parametrize(
    "command",
    [
        ("sh", "-c", f"exec tritonserver --model-repository=/models --http-restricted-api={ALL}:peerserve-admin="
         "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')"),  # the images' CMD
        ("tritonserver", "--http-restricted-api", f"{ALL}:k=v"),  # the value as the next word
        ("tritonserver", "--http-restricted-api=shared-memory,logging:a=1",
         "--http-restricted-api=trace,model-repository:b=2"),  # repeated, one key each
    ],
)  # fmt: skip
def test_a_triton_command_restricting_them_all_is_taken(command: tuple[str, ...]) -> None:
    assert restricted_apis(command) >= set(ALL.split(","))
    assert triton_command_refusal(triton(command)) is None


def test_the_images_cmd_restricts_what_the_check_requires() -> None:
    """The rule is the images' CMD: read it from their Dockerfiles, as the process runtime's flags (triton.py)."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for dockerfile in ("images/triton-jetson/Dockerfile", "images/triton-x86/Dockerfile"):
        cmd = next(line for line in (root / dockerfile).read_text().splitlines() if line.startswith("CMD "))
        assert triton_command_refusal(triton(tuple(json.loads(cmd[4:])))) is None, dockerfile


def test_the_digest_follows_every_creation_setting_and_nothing_else() -> None:
    rt = DockerRuntime("n1", "127.0.0.1")
    base = config_digest(rt._shape(triton(), "sha256:aa"))
    assert base == config_digest(DockerRuntime("n2", "127.0.0.1")._shape(triton(), "sha256:aa"))  # node id: no
    assert len(base) == 16
    changed = [
        rt._shape(triton(), "sha256:bb"),  # the image was rebuilt under the same tag
        rt._shape(triton(("sh", "-c", "tritonserver --http-restricted-api=x:k=1")), "sha256:aa"),
        DockerRuntime("n1", "127.0.0.1", log=DockerLog(max_mb=1))._shape(triton(), "sha256:aa"),
        DockerRuntime("n1", "127.0.0.1", gpu=True)._shape(triton(), "sha256:aa"),
        DockerRuntime("n1", "127.0.0.2")._shape(triton(), "sha256:aa"),
    ]
    digests = {config_digest(shape) for shape in changed}
    assert len(digests) == len(changed) and base not in digests


class FakeImages:
    """images.get answering as the Engine does: an image, or an APIError other than ImageNotFound (a 500)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def get(self, name: str) -> object:
        if self.error is not None:
            raise self.error
        return type("Image", (), {"id": "sha256:aa"})()


class FakeContainers:
    def __init__(self, reload_error: Exception | None = None) -> None:
        self.reload_error = reload_error
        self.created = 0

    def run(self, **kwargs: object) -> object:
        self.created += 1
        error = self.reload_error

        class Container:
            def reload(self) -> None:
                if error is not None:
                    raise error

        return Container()


class FakeClient:
    def __init__(self, images: FakeImages, containers: FakeContainers) -> None:
        self.images, self.containers = images, containers

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.mark.parametrize("where", ["images.get", "container.reload"])
def test_any_engine_error_while_starting_is_an_instance_start_error(where: str) -> None:
    """review27b F5: only ImageNotFound was caught around images.get (a 500 "layer does not exist" escaped), and
    nothing around container.reload (NotFound, a server error): both ended the reconcile round, with no backoff."""
    import docker.errors

    error = docker.errors.APIError("500 Server Error: layer does not exist")
    if where == "container.reload":
        error = docker.errors.NotFound("404 Client Error: No such container")
    images = FakeImages(error if where == "images.get" else None)
    containers = FakeContainers(error if where == "container.reload" else None)
    rt = DockerRuntime("n1", "127.0.0.1", client_factory=lambda: FakeClient(images, containers))
    try:
        with pytest.raises(InstanceStartError, match="docker"):
            asyncio.run(rt.start(triton(), term=1))
    finally:
        asyncio.run(rt.close())
    assert containers.created == (1 if where == "container.reload" else 0)
