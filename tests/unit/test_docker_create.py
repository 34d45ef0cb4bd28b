"""What DockerRuntime creates, decided before any Engine call: the Triton command check, the digest (review12f F2)."""

from __future__ import annotations

import asyncio

import pytest

from agent.catalogue import ModelSpec
from agent.errors import InstanceStartError
from agent.runtime.docker import DockerLog, DockerRuntime, config_digest, triton_command_refusal


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
    kept = triton(("sh", "-c", "exec tritonserver --http-restricted-api=logging,trace:k=$(head -c8 /dev/urandom)"))
    assert triton_command_refusal(kept) is None
    assert triton_command_refusal(triton()) is None  # the image's CMD, which restricts them
    tf = ModelSpec("a", "img", "a", "/models/a", 1, 64, 5, {}, None, ("tensorflow_model_server",))
    assert triton_command_refusal(tf) is None


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
