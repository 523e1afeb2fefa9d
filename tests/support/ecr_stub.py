"""A small ECR-protocol stub: what moto cannot do, over real HTTP on loopback.

It speaks the AWS JSON 1.1 protocol of ECR (`X-Amz-Target:
AmazonEC2ContainerRegistry_V20150921.BatchGetImage` / `.DescribeRepositories` /
`.DescribeImages` / `.DescribePullThroughCacheRules`) and
can be told to be slow, to throttle, to fail, to hang, to reset connections, to
return per-image failure codes, to hold images in the archive storage class, to
pull images through a cache rule from a made-up upstream (or refuse to) and to
return manifests that do not hash to their digest. It records every request it
receives.

In-process (tests)::

    with EcrStub() as stub:
        stub.add_image("team/app", "v1", manifest_bytes, media_type)
        stub.queue("ThrottlingException", "ThrottlingException")
        ...  # point a client at stub.url
        stub.requests()  # what was received

As a process (benchmarks)::

    python -m tests.support.ecr_stub --port 9000 --latency-ms 5

serves any tag of any repository with a synthetic manifest. Over HTTP,
`GET /_stub/calls` returns `{"count": n, "requests": [...]}`, `POST /_stub/config`
sets configuration fields from a JSON object (keys as in `StubConfig`),
`POST /_stub/release` lets hanging requests go, and `POST /_stub/reset` forgets
requests and queued behaviours.
"""

import argparse
import dataclasses
import hashlib
import http.server
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

TARGET_PREFIX: Final = "AmazonEC2ContainerRegistry_V20150921."
HANG: Final = "hang"
"""A behaviour: hold the connection without answering (until `release()` or stop)."""
RESET: Final = "reset"
"""A behaviour: reset the TCP connection instead of answering."""
ANSWER: Final = "answer"
"""A behaviour: answer normally (to queue before a failure)."""

_STATUS_OF_ERROR: Final = {"ServerException": 500, "ServiceUnavailableException": 503}
_MAX_HANG_SECONDS: Final = 120.0
_ACCOUNT: Final = "123456789012"
_SYNTHETIC_MEDIA_TYPE: Final = "application/vnd.docker.distribution.manifest.v2+json"


@dataclasses.dataclass
class StubConfig:
    """What the stub does; every field can be set over HTTP with `POST /_stub/config`."""

    latency_ms: float = 0.0
    """Added to every ECR request."""
    queued: list[str] = dataclasses.field(default_factory=list)
    """Behaviours for the next requests, one each: an error code, HANG, RESET or ANSWER."""
    always: str | None = None
    """A behaviour for every request once `queued` is empty (None: answer normally)."""
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    """Tag or digest → BatchGetImage failureCode to report for it."""
    corrupt: list[str] = dataclasses.field(default_factory=list)
    """Tags or digests whose manifest is returned altered, so it no longer hashes to its digest."""
    archived: dict[str, str] = dataclasses.field(default_factory=dict)
    """Tag or digest → imageStatus (ARCHIVED, ACTIVATING) of an image not in standard
    storage: BatchGetImage reports it ImageInaccessible, DescribeImages with that status."""
    omit: list[str] = dataclasses.field(default_factory=list)
    """Tags or digests the answer does not mention at all."""
    pull_through_rules: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """DescribePullThroughCacheRules entries (ecrRepositoryPrefix, upstreamRegistryUrl…)."""
    upstream: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
    """ECR repository name under a rule → tag → [manifest, media type] its upstream has: a
    BatchGetImage by that tag imports it (creating the repository), as ECR does."""
    import_refused: str | None = None
    """An error code (AccessDeniedException…) BatchGetImage answers instead of importing."""
    synthesize: bool = False
    """Answer any tag of any repository with a manifest made up from repository and tag."""
    repositories: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Repository name → extra DescribeRepositories fields (imageTagMutability, filters…)."""
    images: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
    """Repository name → tag (or digest, for untagged images) → [manifest, media type]."""
    lifecycle_previews: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    """Repository name with a lifecycle policy → digest → the action type its preview
    shows for that image (EXPIRE, TRANSITION). A repository not named has no policy."""
    preview_polls_in_progress: int = 0
    """GetLifecyclePolicyPreview answers IN_PROGRESS this many times after each start."""
    previews_running: list[str] = dataclasses.field(default_factory=list)
    """Repositories whose preview is in progress (a start there is refused)."""


class EcrStub:
    """The stub server, run in a background thread of this process."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = StubConfig()
        self._host = host
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._release = threading.Event()
        self._server = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None
        self._polls: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}"

    def start(self) -> "EcrStub":
        # A short poll interval: stop() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="ecr-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "EcrStub":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def configure(self, **changes: Any) -> None:
        """Set `StubConfig` fields (thread-safe)."""
        with self._lock:
            for key, value in changes.items():
                if not hasattr(self.config, key):
                    raise KeyError(f"no such stub setting: {key}")
                setattr(self.config, key, value)

    def queue(self, *behaviours: str) -> None:
        """Behaviours for the next requests, one each: an error code, HANG, RESET or ANSWER."""
        with self._lock:
            self.config.queued.extend(behaviours)

    def release(self) -> None:
        """Let hanging requests go, now and until `reset()` (they end without an answer)."""
        self._release.set()

    def add_image(
        self,
        repository: str,
        tag: str | None,
        manifest: bytes,
        media_type: str,
    ) -> str:
        """Store an image (untagged when `tag` is None); return its digest."""
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        with self._lock:
            self.config.repositories.setdefault(repository, {})
            images = self.config.images.setdefault(repository, {})
            images[tag if tag is not None else digest] = [manifest.decode(), media_type]
        return digest

    def add_repository(self, repository: str, **fields: Any) -> None:
        """Declare a repository, with extra DescribeRepositories fields."""
        with self._lock:
            self.config.repositories.setdefault(repository, {}).update(fields)
            self.config.images.setdefault(repository, {})

    def requests(self, operation: str | None = None) -> list[dict[str, Any]]:
        """Requests received so far: `{"operation": ..., "body": {...}}`."""
        with self._lock:
            return [
                dict(r) for r in self._requests if operation is None or r["operation"] == operation
            ]

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self.config.queued.clear()
            self.config.always = None
        self._release.clear()

    def _record(self, operation: str, body: Mapping[str, Any]) -> str | None:
        """Record a request; return the behaviour it gets (None: a normal answer)."""
        with self._lock:
            self._requests.append({"operation": operation, "body": dict(body)})
            if self.config.queued:
                return self.config.queued.pop(0)
            return self.config.always

    def _hang(self) -> None:
        self._release.wait(_MAX_HANG_SECONDS)

    def _answer(self, operation: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if operation == "BatchGetImage":
                return _batch_get_image(self.config, body)
            if operation == "DescribeRepositories":
                return _describe_repositories(self.config, body)
            if operation == "DescribeImages":
                return _describe_images(self.config, body)
            if operation == "DescribePullThroughCacheRules":
                return _describe_pull_through_cache_rules(self.config, body)
            if operation == "StartLifecyclePolicyPreview":
                return _start_lifecycle_policy_preview(self.config, body, self._polls)
            if operation == "GetLifecyclePolicyPreview":
                return _get_lifecycle_policy_preview(self.config, body, self._polls)
        return _error("UnknownOperationException", f"the stub does not serve {operation}")

    def _control(self, method: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if method == "GET" and path == "/_stub/calls":
            requests = self.requests()
            return {"count": len(requests), "requests": requests}
        if method == "POST" and path == "/_stub/config":
            self.configure(**body)
            return {"ok": True}
        if method == "POST" and path == "/_stub/release":
            self.release()
            return {"ok": True}
        if method == "POST" and path == "/_stub/reset":
            self.reset()
            return {"ok": True}
        raise KeyError(path)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, stub: EcrStub) -> None:
        super().__init__(address, handler)
        self.stub = stub


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in one segment: separate small writes stall on
    # Nagle's algorithm and delayed ACKs (about 40 ms a request on loopback).
    disable_nagle_algorithm = True
    wbufsize = -1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve_control("GET", {})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            self._send(400, _error("SerializationException", "the body is not JSON")[1])
            return
        if self.path.startswith("/_stub/"):
            self._serve_control("POST", body)
            return
        target = self.headers.get("X-Amz-Target", "")
        if not target.startswith(TARGET_PREFIX):
            self._send(400, _error("UnknownOperationException", f"bad target {target!r}")[1])
            return
        operation = target.removeprefix(TARGET_PREFIX)
        stub = self.server.stub
        behaviour = stub._record(operation, body)
        latency = stub.config.latency_ms
        if latency:
            time.sleep(latency / 1000)
        if behaviour == HANG:
            stub._hang()
            self._reset()
            return
        if behaviour == RESET:
            self._reset()
            return
        if behaviour is not None and behaviour != ANSWER:
            status, answer = _error(behaviour, f"the stub says {behaviour}")
        else:
            status, answer = stub._answer(operation, body)
        self._send(status, answer)

    def _serve_control(self, method: str, body: Mapping[str, Any]) -> None:
        try:
            answer = self.server.stub._control(method, self.path, body)
        except KeyError as exc:
            self._send(404, {"message": f"unknown stub path or setting: {exc}"})
            return
        self._send(200, answer)

    def _send(self, status: int, answer: Mapping[str, Any]) -> None:
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if status >= 400 and "__type" in answer:
            self.send_header("x-amzn-ErrorType", str(answer["__type"]))
        self.end_headers()
        self.wfile.write(payload)

    def _reset(self) -> None:
        """Close with RST, so the client sees a connection reset, not an orderly close."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _error(code: str, message: str) -> tuple[int, dict[str, Any]]:
    return _STATUS_OF_ERROR.get(code, 400), {"__type": code, "message": message}


def _synthetic_manifest(repository: str, tag: str) -> str:
    seed = hashlib.sha256(f"{repository}:{tag}".encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": _SYNTHETIC_MEDIA_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": f"sha256:{seed}",
                "size": 1024,
            },
            "layers": [],
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _batch_get_image(config: StubConfig, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    repository = str(body.get("repositoryName", ""))
    registry_id = str(body.get("registryId", _ACCOUNT))
    image_ids = body.get("imageIds") or []
    if not image_ids or len(image_ids) > 100:
        return _error("InvalidParameterException", "imageIds must hold 1 to 100 entries")
    refused = _pull_through(config, repository, image_ids)
    if refused is not None:
        return refused
    stored = config.images.get(repository)
    if stored is None and not config.synthesize:
        return _error(
            "RepositoryNotFoundException",
            f"The repository with name '{repository}' does not exist in the registry with id"
            f" '{registry_id}'",
        )
    stored = stored or {}
    by_digest = {
        "sha256:" + hashlib.sha256(manifest.encode()).hexdigest(): (manifest, media_type)
        for manifest, media_type in stored.values()
    }
    images: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for image_id in image_ids:
        tag, digest = image_id.get("imageTag"), image_id.get("imageDigest")
        key = tag if tag is not None else digest
        if key in config.omit:
            continue
        if key in config.failures:
            code = config.failures[key]
            failures.append({"imageId": image_id, "failureCode": code, "failureReason": code})
            continue
        if _image_status(config, stored, key) != "ACTIVE":
            failures.append(
                {
                    "imageId": image_id,
                    "failureCode": "ImageInaccessible",
                    "failureReason": "The image is not accessible",
                }
            )
            continue
        found: tuple[str, str] | None = None
        if tag is not None:
            entry = stored.get(tag)
            if entry is not None:
                found = (entry[0], entry[1])
            elif config.synthesize:
                found = (_synthetic_manifest(repository, tag), _SYNTHETIC_MEDIA_TYPE)
        elif digest is not None:
            found = by_digest.get(digest)
        if found is None:
            failures.append(
                {
                    "imageId": image_id,
                    "failureCode": "ImageNotFound",
                    "failureReason": "Requested image not found",
                }
            )
            continue
        manifest, media_type = found
        actual_digest = "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
        if digest is not None and digest != actual_digest:
            failures.append(
                {
                    "imageId": image_id,
                    "failureCode": "ImageTagDoesNotMatchDigest",
                    "failureReason": "Tag and digest do not match",
                }
            )
            continue
        if key in config.corrupt:
            manifest += " "
        answered_id = {"imageDigest": actual_digest} | ({"imageTag": tag} if tag else {})
        images.append(
            {
                "registryId": registry_id,
                "repositoryName": repository,
                "imageId": answered_id,
                "imageManifest": manifest,
                "imageManifestMediaType": media_type,
            }
        )
    return 200, {"images": images, "failures": failures}


def _image_status(config: StubConfig, stored: Mapping[str, list[str]], key: str | None) -> str:
    """The imageStatus of the image a tag or digest names: archived if any of its names is."""
    if key is None:
        return "ACTIVE"
    names = {key}
    for name, (manifest, _) in stored.items():
        digest = "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
        if key in (name, digest):
            names |= {name, digest}
    statuses = [config.archived[name] for name in sorted(names) if name in config.archived]
    return statuses[0] if statuses else "ACTIVE"


def _pull_through(
    config: StubConfig, repository: str, image_ids: list[dict[str, str]]
) -> tuple[int, dict[str, Any]] | None:
    """Import the tags asked for that only the upstream has, or the refusal to."""
    upstream = config.upstream.get(repository, {})
    held = config.images.get(repository, {})
    wanted = [
        tag
        for tag in (image_id.get("imageTag") for image_id in image_ids)
        if tag is not None and tag in upstream and tag not in held
    ]
    if not wanted:
        return None
    if config.import_refused is not None:
        return _error(config.import_refused, f"the stub says {config.import_refused}")
    config.repositories.setdefault(repository, {})
    images = config.images.setdefault(repository, {})
    for tag in wanted:
        images[tag] = list(upstream[tag])
    return None


def _describe_pull_through_cache_rules(
    config: StubConfig, body: Mapping[str, Any]
) -> tuple[int, dict[str, Any]]:
    """The rules in pages of two, so that a client that does not follow nextToken misses some."""
    registry_id = str(body.get("registryId", _ACCOUNT))
    start = int(body.get("nextToken") or 0)
    page = config.pull_through_rules[start : start + 2]
    answer: dict[str, Any] = {
        "pullThroughCacheRules": [
            {"registryId": registry_id, "createdAt": 1_700_000_000} | rule for rule in page
        ]
    }
    if start + 2 < len(config.pull_through_rules):
        answer["nextToken"] = str(start + 2)
    return 200, answer


def _start_lifecycle_policy_preview(
    config: StubConfig, body: Mapping[str, Any], polls: dict[str, int]
) -> tuple[int, dict[str, Any]]:
    repository = str(body.get("repositoryName", ""))
    if repository not in config.lifecycle_previews:
        return _error(
            "LifecyclePolicyNotFoundException",
            f"Lifecycle policy does not exist for the repository with name '{repository}'",
        )
    if repository in config.previews_running:
        return _error(
            "LifecyclePolicyPreviewInProgressException",
            "The previous lifecycle policy preview request has not completed",
        )
    polls[repository] = config.preview_polls_in_progress
    return 200, {"repositoryName": repository, "status": "IN_PROGRESS"}


def _get_lifecycle_policy_preview(
    config: StubConfig, body: Mapping[str, Any], polls: dict[str, int]
) -> tuple[int, dict[str, Any]]:
    repository = str(body.get("repositoryName", ""))
    if repository not in config.lifecycle_previews or repository not in polls:
        return _error(
            "LifecyclePolicyPreviewNotFoundException",
            f"There is no lifecycle policy preview for the repository '{repository}'",
        )
    if polls[repository] > 0:
        polls[repository] -= 1
        return 200, {"repositoryName": repository, "status": "IN_PROGRESS", "previewResults": []}
    wanted = [i.get("imageDigest") for i in body.get("imageIds") or []]
    if len(wanted) > 100:
        return _error("InvalidParameterException", "at most 100 imageIds")
    actions = config.lifecycle_previews[repository]
    results = [
        {"imageDigest": digest, "action": {"type": actions[digest]}, "appliedRulePriority": 1}
        for digest in wanted
        if digest in actions
    ]
    return 200, {"repositoryName": repository, "status": "COMPLETE", "previewResults": results}


def _describe_images(config: StubConfig, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """DescribeImages of the given imageIds, as ECR answers it: without a filter only ACTIVE
    images, and ImageNotFoundException when one of them is not there."""
    repository = str(body.get("repositoryName", ""))
    registry_id = str(body.get("registryId", _ACCOUNT))
    stored = config.images.get(repository)
    if stored is None:
        return _error(
            "RepositoryNotFoundException",
            f"The repository with name '{repository}' does not exist in the registry with id"
            f" '{registry_id}'",
        )
    wanted = str((body.get("filter") or {}).get("imageStatus", "ACTIVE"))
    details: list[dict[str, Any]] = []
    for image_id in body.get("imageIds") or []:
        tag, digest = image_id.get("imageTag"), image_id.get("imageDigest")
        entry = stored.get(tag) if tag is not None else None
        if entry is None and digest is not None:
            entry = next(
                (
                    e
                    for e in stored.values()
                    if "sha256:" + hashlib.sha256(e[0].encode()).hexdigest() == digest
                ),
                None,
            )
        key = tag if tag is not None else digest
        status = _image_status(config, stored, key)
        if entry is None or wanted not in ("ANY", status):
            return _error(
                "ImageNotFoundException",
                f"The image with imageId {image_id} does not exist within the repository with"
                f" name '{repository}' in the registry with id '{registry_id}'",
            )
        manifest, media_type = entry
        actual = "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
        tags = sorted(name for name, e in stored.items() if e[0] == manifest and name != actual)
        details.append(
            {
                "registryId": registry_id,
                "repositoryName": repository,
                "imageDigest": actual,
                "imageTags": tags,
                "imageManifestMediaType": media_type,
                "imagePushedAt": 1_700_000_000,
                "imageStatus": status,
            }
        )
    return 200, {"imageDetails": details}


def _describe_repositories(
    config: StubConfig, body: Mapping[str, Any]
) -> tuple[int, dict[str, Any]]:
    registry_id = str(body.get("registryId", _ACCOUNT))
    names = body.get("repositoryNames") or list(config.repositories)
    described = []
    for name in names:
        fields = config.repositories.get(name)
        if fields is None and not config.synthesize:
            return _error(
                "RepositoryNotFoundException",
                f"The repository with name '{name}' does not exist in the registry with id"
                f" '{registry_id}'",
            )
        described.append(
            {
                "registryId": registry_id,
                "repositoryName": name,
                "repositoryArn": f"arn:aws:ecr:us-east-1:{registry_id}:repository/{name}",
                "repositoryUri": f"{registry_id}.dkr.ecr.us-east-1.amazonaws.com/{name}",
                "createdAt": 1_700_000_000,
                "imageTagMutability": "MUTABLE",
            }
            | (fields or {})
        )
    return 200, {"repositories": described}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--no-synthesize",
        action="store_true",
        help="only answer for images added through /_stub/config",
    )
    parser.add_argument(
        "--config",
        default="{}",
        help="further StubConfig fields as JSON, in force before the first request"
        ' (e.g. \'{"always": "hang"}\': a restart mid-outage answers no call normally)',
    )
    arguments = parser.parse_args(argv)
    stub = EcrStub(host=arguments.host, port=arguments.port)
    stub.configure(
        latency_ms=arguments.latency_ms,
        synthesize=not arguments.no_synthesize,
        **json.loads(arguments.config),
    )
    print(stub.url, flush=True)
    try:
        stub._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stub._server.server_close()


if __name__ == "__main__":
    main()
