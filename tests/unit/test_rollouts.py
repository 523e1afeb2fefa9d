"""What the webhook remembers of each controller revision, and when it reads the
revision's pods again (the apiserver list is a seam: the real one is in the e2e tests)."""

import asyncio
import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from webhook import errors, names
from webhook.core import decisions, references, revisions
from webhook.serving import rollouts

ECR = "111122223333.dkr.ecr.eu-west-1.amazonaws.com"
IMAGE = f"{ECR}/shop/api:v1"
OLD = references.Digest("sha256:" + hashlib.sha256(b"old").hexdigest())
NEW = references.Digest("sha256:" + hashlib.sha256(b"new").hexdigest())
REVISION = revisions.Revision(
    "shop", "ReplicaSet", "web-6dd57c7c59", "rs-uid", "6dd57c7c59", "pod-template-hash=6dd57c7c59"
)
IMAGES = frozenset({IMAGE})


def running(digest: str) -> dict[str, Any]:
    """A pod of REVISION that the webhook pinned to `digest`."""
    return {
        "metadata": {
            "name": "web-6dd57c7c59-a",
            "namespace": "shop",
            "creationTimestamp": "2026-12-02T10:00:00Z",
            "labels": {"pod-template-hash": "6dd57c7c59"},
            "ownerReferences": [
                {
                    "kind": "ReplicaSet",
                    "name": "web-6dd57c7c59",
                    "uid": "rs-uid",
                    "controller": True,
                }
            ],
            "annotations": {
                names.ANNOTATION_ORIGINAL_IMAGES: json.dumps({"containers/api": IMAGE})
            },
        },
        "spec": {"containers": [{"name": "api", "image": f"{IMAGE}@{digest}"}]},
    }


class Apiserver:
    """Lists of pods as the apiserver would answer them, counted."""

    def __init__(self, pods: list[dict[str, Any]] | None = None) -> None:
        self.pods = pods or []
        self.lists: list[tuple[str, str, int]] = []
        self.failure: errors.KubernetesError | None = None
        self.gate: threading.Event | None = None
        self.warnings: list[tuple[revisions.Revision, str, str]] = []

    def list_pods(
        self, namespace: str, selector: str, limit: int, timeout: float
    ) -> list[Mapping[str, Any]]:
        self.lists.append((namespace, selector, limit))
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if self.failure is not None:
            raise self.failure
        return list(self.pods)

    def post_warning(self, revision: revisions.Revision, reason: str, message: str) -> None:
        self.warnings.append((revision, reason, message))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def remembering(apiserver: Apiserver, clock: Clock, **kwargs: Any) -> rollouts.Rollouts:
    return rollouts.Rollouts(apiserver.list_pods, apiserver.post_warning, clock=clock, **kwargs)


def verdict(
    digests: Mapping[str, references.Digest], repins: tuple[decisions.Repin, ...] = ()
) -> decisions.Verdict:
    return decisions.Verdict(
        allowed=True,
        denials=(),
        warnings=(),
        edits=(),
        annotations={},
        findings=(),
        revision_digests=dict(digests),
        repins=repins,
    )


async def test_a_revision_new_to_the_replica_is_read_from_its_pods_once() -> None:
    apiserver, clock = Apiserver([running(OLD)]), Clock()
    memory = remembering(apiserver, clock)
    for _ in range(3):
        assert await memory.in_use(REVISION, IMAGES, deadline=clock() + 2) == ({IMAGE: OLD}, None)
    assert apiserver.lists == [("shop", "pod-template-hash=6dd57c7c59", rollouts.LIST_LIMIT)]


async def test_what_this_replica_pinned_for_a_revision_is_used_without_asking_again() -> None:
    apiserver, clock = Apiserver([]), Clock()
    memory = remembering(apiserver, clock)
    assert await memory.in_use(REVISION, IMAGES, deadline=clock() + 2) == ({}, None)
    memory.record(REVISION, {}, verdict({IMAGE: NEW}), unread=False)
    assert await memory.in_use(REVISION, IMAGES, deadline=clock() + 2) == ({IMAGE: NEW}, None)
    assert len(apiserver.lists) == 1


async def test_a_revisions_pods_are_read_again_after_a_while_and_what_they_run_wins() -> None:
    apiserver, clock = Apiserver([]), Clock()
    memory = remembering(apiserver, clock)
    await memory.in_use(REVISION, IMAGES, deadline=clock() + 2)
    memory.record(REVISION, {}, verdict({IMAGE: NEW}), unread=False)
    # Another replica pinned the revision's first pod to OLD at the same moment.
    apiserver.pods = [running(OLD)]
    clock.now += rollouts.RECHECK_SECONDS + 1
    assert await memory.in_use(REVISION, IMAGES, deadline=clock() + 2) == ({IMAGE: OLD}, None)
    assert len(apiserver.lists) == 2


async def test_pods_that_cannot_be_read_are_said_so_and_asked_for_again_later() -> None:
    apiserver, clock = Apiserver([running(OLD)]), Clock()
    apiserver.failure = errors.KubernetesError("cannot list pods: HTTP 403 Forbidden", 403)
    memory = remembering(apiserver, clock)
    known, problem = await memory.in_use(REVISION, IMAGES, deadline=clock() + 2)
    assert known == {}
    assert problem == "cannot list pods: HTTP 403 Forbidden"
    memory.record(REVISION, {}, verdict({IMAGE: NEW}), unread=True)
    apiserver.failure = None
    # Not at the very next pod: what this replica pinned is used meanwhile.
    assert await memory.in_use(REVISION, IMAGES, deadline=clock() + 2) == ({IMAGE: NEW}, None)
    assert len(apiserver.lists) == 1
    clock.now += rollouts.RETRY_UNREAD_SECONDS + 1
    assert await memory.in_use(REVISION, IMAGES, deadline=clock() + 2) == ({IMAGE: OLD}, None)
    assert len(apiserver.lists) == 2


async def test_pods_of_one_revision_arriving_together_share_one_list() -> None:
    apiserver, clock = Apiserver([running(OLD)]), Clock()
    apiserver.gate = threading.Event()
    memory = remembering(apiserver, clock)
    waiting = [
        asyncio.create_task(memory.in_use(REVISION, IMAGES, deadline=clock() + 2)) for _ in range(5)
    ]
    await asyncio.sleep(0.05)
    apiserver.gate.set()
    assert await asyncio.gather(*waiting) == [({IMAGE: OLD}, None)] * 5
    assert len(apiserver.lists) == 1


async def test_a_list_that_does_not_answer_in_time_leaves_the_pod_to_the_registry() -> None:
    apiserver, clock = Apiserver([running(OLD)]), Clock()
    apiserver.gate = threading.Event()
    memory = remembering(apiserver, clock)
    try:
        known, problem = await memory.in_use(REVISION, IMAGES, deadline=clock() - 1)
    finally:
        apiserver.gate.set()
    assert known == {}
    assert problem is not None


async def test_a_gone_digest_is_replaced_and_reported_once_on_the_owner() -> None:
    apiserver, clock = Apiserver([running(OLD)]), Clock()
    memory = remembering(apiserver, clock)
    in_use, _ = await memory.in_use(REVISION, IMAGES, deadline=clock() + 2)
    repin = decisions.Repin("containers[api]", IMAGE, OLD, "ImageNotFound: gone", NEW)
    memory.record(REVISION, in_use, verdict({IMAGE: NEW}, (repin,)), unread=False)
    memory.record(REVISION, in_use, verdict({IMAGE: NEW}, (repin,)), unread=False)
    for _ in range(100):
        if apiserver.warnings:
            break
        await asyncio.sleep(0.01)
    assert await memory.in_use(REVISION, IMAGES, deadline=clock() + 2) == ({IMAGE: NEW}, None)
    ((owner, reason, message),) = apiserver.warnings
    assert owner == REVISION
    assert reason == names.REASON_REVISION_DIGEST_GONE
    assert OLD in message
    assert NEW in message
    assert "kubectl rollout restart" in message


async def test_the_revisions_remembered_are_bounded() -> None:
    apiserver, clock = Apiserver([]), Clock()
    memory = remembering(apiserver, clock, capacity=3)
    for index in range(10):
        revision = revisions.Revision(
            "shop", "ReplicaSet", f"rs-{index}", f"uid-{index}", "h", "h=1"
        )
        memory.record(revision, {}, verdict({IMAGE: NEW}), unread=False)
    assert len(memory) == 3


@pytest.mark.parametrize("unread", [False, True])
async def test_a_replicationcontroller_without_labels_is_remembered_without_a_list(
    unread: bool,
) -> None:
    apiserver, clock = Apiserver([]), Clock()
    memory = remembering(apiserver, clock)
    unlabelled = revisions.Revision("shop", "ReplicationController", "legacy", "rc-uid", "", "")
    assert await memory.in_use(unlabelled, IMAGES, deadline=clock() + 2) == ({}, None)
    memory.record(unlabelled, {}, verdict({IMAGE: OLD}), unread=unread)
    assert await memory.in_use(unlabelled, IMAGES, deadline=clock() + 2) == ({IMAGE: OLD}, None)
    assert apiserver.lists == []
