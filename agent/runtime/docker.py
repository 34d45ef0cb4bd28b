"""DockerRuntime: TF-Serving containers on the local Docker Engine (the real runtime on Jetsons).

* The Engine is found the docker SDK's way (DOCKER_HOST honoured, else the local socket).
* Never pulls: an image missing locally is an InstanceStartError naming it.
* Containers carry labels ``peerserve.managed``, ``peerserve.node``, ``peerserve.model``,
  ``peerserve.term``, a memory limit from the catalogue, ``restart_policy: unless-stopped`` (they
  outlive an agent restart and are adopted by label), ``init`` (fast stops), a bounded log (``DockerLog``:
  json-file rotated at ``docker_log_max_mb``, ``docker_log_files`` kept), and the nvidia runtime when
  ``docker_gpu`` is set (Jetson).
* REST port 8501 (TF-Serving; 8000 for Triton images, ``server = "triton"``) is published on the
  advertised address at a port the Engine picks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import shlex
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from agent.catalogue import ModelSpec
from agent.errors import InstanceStartError, RuntimeUnavailable
from agent.runtime.base import Instance
from agent.runtime.triton import RESTRICTED_APIS

log = logging.getLogger(__name__)

LABEL = "peerserve.managed"
REST_PORT = "8501/tcp"
TRITON_HTTP_PORT = "8000/tcp"  # NVIDIA's Triton images (server = "triton") answer HTTP on 8000
DIGEST_LABEL = "peerserve.digest"
# Bump when this module changes how a container is created in a way the digested settings below do not show.
DIGEST_VERSION = 1
DOCKER_WORKERS = 4  # threads for Docker calls, apart from asyncio's default pool (a hung daemon holds them)
T = TypeVar("T")


@dataclass(frozen=True)
class DockerLog:
    """A container's log bound: the json-file driver rotates at ``max_mb`` and keeps ``files`` files.

    A model server logs a line per request (the stand-in one per failing request); Docker's default json-file
    log has no size limit unless the engine's daemon.json sets one, so it grew on the board's disk (an SD card
    on a Nano) without end. json-file, not ``local``: ``docker logs`` reads both, and json-file is what an
    engine without a daemon.json uses, so operators' tools that read the files still find them."""

    max_mb: float = 10.0
    files: int = 3

    def config(self) -> dict[str, Any]:
        """The ``log_config`` for docker-py's ``containers.run`` (HostConfig.LogConfig)."""
        size_kb = max(1, round(self.max_mb * 1024))
        return {"Type": "json-file", "Config": {"max-size": f"{size_kb}k", "max-file": str(self.files)}}


def _why(exc: Any) -> str:
    """An APIError's own words (its explanation), else its text."""
    return str(getattr(exc, "explanation", None) or exc)


class DockerRuntime:
    kind = "docker"

    def __init__(
        self,
        node_id: str,
        bind_address: str,
        gpu: bool = False,
        client_factory: Callable[[], Any] | None = None,
        log: DockerLog | None = None,
        spec_of: Callable[[str], ModelSpec | None] | None = None,
    ) -> None:
        self.node_id = node_id
        # the catalogue entry a model's container would be created from now (None: no outdated check)
        self.spec_of = spec_of
        self._told_outdated: set[str] = set()  # container ids already logged as outdated (pruned on each list)
        self.log = log or DockerLog()
        self.bind_address = bind_address or "0.0.0.0"
        self.gpu = gpu
        self._factory = client_factory or _from_env
        self._client: Any = None
        # Docker calls block a thread until the Engine answers or the client's timeout (20 s): on their own pool, a
        # hung daemon never holds the threads the leader's solver round trips and the request-log flush run on
        self._pool = ThreadPoolExecutor(DOCKER_WORKERS, thread_name_prefix="docker")

    def _docker(self) -> Any:
        import docker.errors
        import requests

        if self._client is None:
            try:
                self._client = self._factory()
                self._client.ping()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                self._client = None
                raise RuntimeUnavailable(f"Docker Engine unreachable: {type(exc).__name__}: {exc}") from exc
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        import docker.errors
        import requests

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))
        except (docker.errors.APIError, docker.errors.ImageNotFound, docker.errors.NotFound):
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            # unreachable, refused, or a read timeout (a hung daemon): the next call makes a new client
            self._client = None
            raise RuntimeUnavailable(f"Docker Engine unreachable: {type(exc).__name__}: {exc}") from exc

    def _run_container(self, spec: ModelSpec, term: int) -> Any:
        import docker.errors

        refusal = triton_command_refusal(spec)
        if refusal:
            raise InstanceStartError(refusal)
        client = self._docker()
        try:
            image = client.images.get(spec.image)
        except docker.errors.ImageNotFound as exc:
            raise InstanceStartError(
                f"image {spec.image!r} for model {spec.name!r} is not on this node; peerserve never pulls: "
                f"build or load it (see images/README.md)"
            ) from exc
        except docker.errors.APIError as exc:  # any other Engine answer (a 500: "layer does not exist"), review27b F5
            raise InstanceStartError(f"docker could not read image {spec.image} for {spec.name}: {_why(exc)}") from exc
        shape = self._shape(spec, image.id)
        kwargs: dict[str, Any] = dict(
            image=spec.image,
            detach=True,
            # a random suffix, not the clock: parallel starts of one model in one millisecond got the same name
            # and Docker refused all but one with 409 (review12f F1: 63 of 200 starts)
            name=f"peerserve-{self.node_id}-{spec.name}-{secrets.token_hex(4)}",
            labels={
                LABEL: "true",
                "peerserve.node": self.node_id,
                "peerserve.model": spec.name,
                "peerserve.term": str(term),
                "peerserve.server": spec.server,
                DIGEST_LABEL: config_digest(shape),
            },
            **{k: v for k, v in shape.items() if k not in ("image_id", "version")},
        )
        try:
            container = client.containers.run(**kwargs)
        except docker.errors.APIError as exc:
            raise InstanceStartError(f"docker could not start {spec.image} for {spec.name}: {_why(exc)}") from exc
        try:
            container.reload()
        except docker.errors.APIError as exc:  # e.g. NotFound: it exited and was removed at once; listed if it is back
            why = _why(exc)
            raise InstanceStartError(f"docker started {spec.image} for {spec.name} but cannot read it: {why}") from exc
        return container

    def _shape(self, spec: ModelSpec, image_id: str) -> dict[str, Any]:
        """Everything a new container for ``spec`` is created with that shapes what runs (``containers.run``
        arguments, plus the image's id), apart from its name and labels: digested into its ``peerserve.digest``
        label, so a container created by another version or from another image, command or setting is seen."""
        shape: dict[str, Any] = dict(
            version=DIGEST_VERSION,
            image_id=image_id,
            command=list(spec.command) or None,
            environment={
                "MODEL_NAME": spec.name,
                "MODEL_BASE_PATH": spec.model_path.rsplit("/", 1)[0] or "/models",
                **spec.env,
            },
            ports={TRITON_HTTP_PORT if spec.server == "triton" else REST_PORT: (self.bind_address, None)},
            # the stand-in's own bounds (agent/modelserver.py MEMORY_BUDGET, 40 MiB over ~24 MiB at rest) are
            # sized to the 64 MiB the catalogue gives it: its largest legal requests peak below that
            mem_limit=f"{max(6, int(spec.mem_mb))}m",
            restart_policy={"Name": "unless-stopped"},
            init=True,
            log_config=self.log.config(),
        )
        if self.gpu:
            shape["runtime"] = "nvidia"
        return shape

    async def start(self, spec: ModelSpec, term: int) -> Instance:
        container = await self._call(self._run_container, spec, term)
        instance = self._instance(container)
        log.info("started container %s for %s at %s", container.short_id, spec.name, instance.url)
        return instance

    def _instance(self, container: Any, outdated: bool = False) -> Instance:
        labels = container.labels or {}
        port = TRITON_HTTP_PORT if labels.get("peerserve.server") == "triton" else REST_PORT
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(port) or []
        url = ""
        if bindings:
            host = bindings[0].get("HostIp") or "127.0.0.1"
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            url = f"http://{host}:{bindings[0]['HostPort']}"
        return Instance(
            id=container.id,
            model=labels.get("peerserve.model", ""),
            url=url,
            running=container.status == "running" and bool(url),
            term=int(labels.get("peerserve.term", "0") or 0),
            started_at=started_at(container.attrs),
            detail=f"container {container.short_id} {container.status}" + (" (outdated)" if outdated else ""),
            mem_mb=_measured_mb(container),
            outdated=outdated,
        )

    async def list(self) -> list[Instance]:
        def containers() -> list[tuple[Any, bool]]:
            import docker.errors

            client = self._docker()
            filters = {"label": [f"{LABEL}=true", f"peerserve.node={self.node_id}"]}
            found = []
            image_ids: dict[str, str | None] = {}  # image name -> its id now (None: not on this node), per list
            for listed in client.containers.list(all=True, filters=filters, sparse=True):
                try:  # what docker-py's list does per container, but one removed meanwhile is gone, not an error
                    container = client.containers.get(listed.id)
                except docker.errors.NotFound:
                    continue
                found.append((container, self._outdated(client, container, image_ids)))
            return found

        listed = await self._call(containers)
        outdated = {c.id for c, old in listed if old}
        for c, _ in listed:
            if c.id in outdated and c.id not in self._told_outdated:
                log.warning(
                    "container %s for %s was created with other settings or another image than this agent's "
                    "(an older version, or a changed catalogue): it is replaced once a new one is ready",
                    c.short_id,
                    (c.labels or {}).get("peerserve.model", "?"),
                )
        self._told_outdated = outdated
        return [self._instance(c, old) for c, old in listed]

    def _outdated(self, client: Any, container: Any, image_ids: dict[str, str | None]) -> bool:
        """Whether ``container`` differs from what this agent would create for its model now (its digest label).

        Adopting every labelled container for good kept an upgrade's create-time changes (the log bound, Triton's
        admin restriction, a new image) from ever reaching the servers already running (review12f F2). A model
        not in the catalogue, or whose image is not on this node, is not judged: it is stopped as not desired, or
        no new container could be created for it."""
        import docker.errors

        labels = container.labels or {}
        spec = self.spec_of(labels.get("peerserve.model", "")) if self.spec_of is not None else None
        if spec is None:
            return False
        if spec.image not in image_ids:
            try:
                image_ids[spec.image] = client.images.get(spec.image).id
            except docker.errors.ImageNotFound:
                image_ids[spec.image] = None
        image_id = image_ids[spec.image]
        if image_id is None:
            return False
        return str(labels.get(DIGEST_LABEL, "")) != config_digest(self._shape(spec, image_id))

    async def stop(self, instance_id: str) -> None:
        import docker.errors

        def remove() -> None:
            try:
                container = self._docker().containers.get(instance_id)
            except docker.errors.NotFound:
                return
            container.stop(timeout=5)
            container.remove(force=True)

        await self._call(remove)
        log.info("stopped container %s", instance_id[:12])

    async def close(self) -> None:
        # Containers are left running on purpose (restart policy): a restarted agent adopts them.
        if self._client is not None:
            self._client.close()
            self._client = None
        self._pool.shutdown(wait=False, cancel_futures=True)  # a call stuck on a hung daemon ends at its timeout


def triton_command_refusal(spec: ModelSpec) -> str | None:
    """Why a Triton entry's catalogue ``command`` is refused (None: no command, or it keeps the restriction).

    A ``command`` replaces the image's CMD, and with it ``--http-restricted-api``, which keeps Triton's admin
    APIs (logging, shared memory, trace, model repository) from anyone who can reach its published port
    (docs/security.md, review12d): a command that drops it would quietly reopen them (review12f F2). The flag's
    API lists are read (``restricted_apis``), not its name alone: ``--http-restricted-api=trace:k=v`` passed and
    left the other three open (review27b F6). Every one of RESTRICTED_APIS, the images' CMD's, must be named."""
    if spec.server != "triton" or not spec.command:
        return None
    missing = [api for api in RESTRICTED_APIS.split(",") if api not in restricted_apis(spec.command)]
    if not missing:
        return None
    return (
        f"catalogue command for Triton model {spec.name!r} does not restrict {', '.join(missing)} with "
        f"--http-restricted-api=API,...:KEY=VALUE (the images' CMD restricts {RESTRICTED_APIS}): it replaces the "
        f"image's CMD and would open Triton's admin APIs to anyone who reaches its port (see docs/operator-guide.md)"
    )


RESTRICT_FLAG = "--http-restricted-api"


def restricted_apis(command: Sequence[str]) -> set[str]:
    """The APIs ``command``'s ``--http-restricted-api`` flags restrict, each flag as Triton reads it:
    ``--http-restricted-api=<api>,<api>...:<key>=<value>`` (or the value as the next word), repeatable. A flag whose
    value names no key or an empty value (no ``:KEY=VALUE``) restricts nothing here. The command's elements are
    split as a shell would split them, for the images' ``sh -c "exec tritonserver ..."``, a ``#`` ending the words
    of its element (review27c I1: ``... # --http-restricted-api=...`` in ``sh -c`` is a comment the shell drops,
    and the check counted the flag). Every element is split so, not only a ``sh -c`` script's: in an exec-form
    argument a ``#`` is literal (and shlex also ends a word at a ``#`` inside it, where a shell would not), so an
    odd but honest command may be refused; refusing it is the safe side, a passed comment reopens the APIs."""
    words: list[str] = []
    for element in command:
        try:
            words += shlex.split(element, comments=True)
        except ValueError:  # unbalanced quotes: plain whitespace, up to a '#' as above
            words += element.partition("#")[0].split()
    apis: set[str] = set()
    for i, word in enumerate(words):
        if word.startswith(RESTRICT_FLAG + "="):
            value = word[len(RESTRICT_FLAG) + 1 :]
        elif word == RESTRICT_FLAG and i + 1 < len(words):
            value = words[i + 1]
        else:
            continue
        listed, colon, grant = value.partition(":")
        key, _, secret = grant.partition("=")
        if colon and key and secret:  # review27c I1: ':KEY=' with an empty value counted as restricted
            apis |= {api.strip() for api in listed.split(",")}
    return apis


def config_digest(shape: Mapping[str, Any]) -> str:
    """A short stable digest of a container's creation settings (``DockerRuntime._shape``)."""
    text = json.dumps(shape, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _from_env() -> Any:
    import docker

    return docker.from_env(timeout=20)


def _measured_mb(container: Any) -> float | None:
    """Resident memory of the container's processes, read from /proc (the agent shares the host's PIDs)."""
    from agent.runtime.process import tree_rss_mb

    pid = (container.attrs.get("State") or {}).get("Pid") or 0
    return tree_rss_mb(int(pid)) if pid and container.status == "running" else None


def started_at(attrs: Mapping[str, Any]) -> float:
    """When the container's processes last started (State.StartedAt), else when it was created.

    Not Created alone: after a reboot or a dockerd restart the restart policy starts a container made days ago,
    and a server still loading its model would look past instance_ready_timeout_s and be replaced."""
    created = _parse_time(str(attrs.get("Created") or ""))
    state = attrs.get("State")
    started = _parse_time(str(state.get("StartedAt") or "")) if isinstance(state, Mapping) else 0.0
    return started if started > 0 else created  # a never-started container reports 0001-01-01T00:00:00Z


def _parse_time(text: str) -> float:
    from datetime import datetime

    try:
        return max(0.0, datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp())
    except (ValueError, OverflowError):
        return 0.0
