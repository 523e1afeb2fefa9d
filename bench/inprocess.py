"""Where one admission's CPU goes, measured in-process: no HTTP, no TLS, no control plane.

kopf's webhook function (`serve_admission_request`) is bound the way the operator
binds it, with our handlers, a policy index holding one Mutate policy, and a
resolver whose cache already holds every digest (its client is never called).
Each step is timed alone over many iterations; the end-to-end numbers (aiohttp,
TLS, the floor) come from the `warm` benchmark.
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import io
import json
import pstats
import re
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, cast

import kopf
from kopf._cogs.structs import references as kopf_references
from kopf._core.engines import admission as kopf_admission

from bench import reviews
from webhook.core import decisions, outcomes, policies, references, revisions
from webhook.registries import resolver
from webhook.serving import admission, rollouts

_DIGEST = "sha256:" + "a" * 64
_PATH_PREFIX = re.compile(r"/\S*/(?:site-packages|lib/python3\.\d+)/|/\S*/(?=webhook/)")


class _CachedOnly:
    """A registry client for a resolver whose cache answers everything."""

    def lookup(
        self,
        repository: outcomes.Repository,
        queries: Collection[outcomes.Query],
        *,
        timeout: float,
    ) -> Mapping[outcomes.Query, outcomes.Outcome]:
        return {q: outcomes.Found(references.Digest(_DIGEST), "x") for q in queries}

    def mutability(
        self, repository: outcomes.Repository, *, timeout: float
    ) -> outcomes.MutabilityOutcome:
        raise NotImplementedError


class _Capture:
    """Stands in for the admission server: keeps the webhook function it is given."""

    fn: Any = None

    def __call__(self, fn: Any) -> Any:
        self.fn = fn
        return iter(())


def _time(iterations: int, step: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - started) / iterations * 1e6


async def _atime(iterations: int, step: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        await step()
    return (time.perf_counter() - started) / iterations * 1e6


async def _run(iterations: int) -> dict[str, Any]:
    the_resolver = resolver.Resolver(_CachedOnly())
    the_rollouts = rollouts.Rollouts(lambda *_: [], lambda *_: None)
    the_admission = admission.Admission(
        resolver=the_resolver,
        own_namespace="digestguard",
        resolve_deadline=5.0,
        read_namespace_labels=lambda _: asyncio.sleep(0, {}),
        rollouts=the_rollouts,
    )
    insights = kopf_references.Insights()
    insights.webhook_resources.add(
        kopf_references.Resource(
            group="",
            version="v1",
            plural="pods",
            kind="Pod",
            namespaced=True,
            subresources=frozenset({"ephemeralcontainers"}),
        )
    )
    policy = policies.parse(
        "bench",
        1,
        {"images": ["*.dkr.ecr.*.amazonaws.com/**"], "action": "Mutate", "maxStale": "10m"},
    )
    # Bound as kopf's operator binds it; its types name kopf's own index and memo classes.
    kopf_fn: Any = functools.partial(
        cast(Any, kopf_admission.serve_admission_request),
        settings=kopf.OperatorSettings(),
        memories=admission._AdmissionOnlyMemories(),
        memobase=kopf.Memo(),
        registry=the_admission.registry(),
        insights=insights,
        indices={
            admission.POLICY_INDEX: {"bench": [policy]},
            admission.NAMESPACE_INDEX: {"bench": [{}]},
        },
    )
    capture = _Capture()
    admission._DirectPatch(capture)(kopf_fn)  # type: ignore[arg-type]
    served = capture.fn

    images = [reviews.image(f"bench/app{i}", "v1") for i in range(3)]
    mutate = json.dumps(reviews.create("p", images))
    own = json.dumps(reviews.create("p", images, namespace="digestguard"))
    first = await served(json.loads(mutate), webhook="mutate-pods", headers={}, sslpeer={})
    assert first["response"].get("patch"), first  # the cache is warm and the pod is pinned
    of_replicaset = json.loads(mutate)
    metadata = of_replicaset["request"]["object"]["metadata"]
    metadata["labels"] = {**metadata.get("labels", {}), "pod-template-hash": "6dd57c7c59"}
    metadata["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-6dd57c7c59",
            "uid": "0f6c2b55-9d3e-4c77-a1f4-2f2d9a1c0b11",
            "controller": True,
        }
    ]
    replicaset = json.dumps(of_replicaset)
    first = await served(json.loads(replicaset), webhook="mutate-pods", headers={}, sslpeer={})
    assert first["response"].get("patch"), first
    assert len(the_rollouts) == 1  # the revision is remembered: no list of pods from here on

    steps: dict[str, float] = {}
    steps["json.loads of the AdmissionReview (2 KB)"] = _time(
        iterations, lambda: json.loads(mutate)
    )
    steps["kopf webhook function, own namespace (kopf only, no policy work)"] = await _atime(
        iterations,
        lambda: served(json.loads(own), webhook="mutate-pods", headers={}, sslpeer={}),
    )
    steps["kopf webhook function, warm Mutate of a 3-container pod"] = await _atime(
        iterations,
        lambda: served(json.loads(mutate), webhook="mutate-pods", headers={}, sslpeer={}),
    )
    steps[
        "kopf webhook function, warm Mutate of a ReplicaSet's pod (revision remembered)"
    ] = await _atime(
        iterations,
        lambda: served(json.loads(replicaset), webhook="mutate-pods", headers={}, sslpeer={}),
    )
    steps["  same, patch made by kopf's deepcopy + jsonpatch diff (before b6769e1)"] = await _atime(
        iterations,
        lambda: kopf_fn(json.loads(mutate), webhook="mutate-pods", headers={}, sslpeer={}),
    )

    obj = json.loads(mutate)["request"]["object"]
    review = decisions.Review(operation="CREATE", namespace="bench", obj=obj, old=None)
    plan = decisions.plan(review, [policy], {}, decisions.Phase.MUTATING)
    steps["  decisions.plan (parse 3 references, match policies)"] = _time(
        iterations, lambda: decisions.plan(review, [policy], {}, decisions.Phase.MUTATING)
    )
    deadline = time.monotonic() + 3600
    results = await the_resolver.resolve(plan.queries, deadline=deadline)
    steps["  resolver.resolve (3 cache hits)"] = await _atime(
        iterations, lambda: the_resolver.resolve(plan.queries, deadline=deadline)
    )
    steps["  decisions.decide (verdict, edits, annotation)"] = _time(
        iterations, lambda: decisions.decide(plan, results, {})
    )
    verdict = decisions.decide(plan, results, {})
    steps["  decisions.json_patch (the patch written directly)"] = _time(
        iterations, lambda: decisions.json_patch(obj, verdict)
    )

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        await served(json.loads(mutate), webhook="mutate-pods", headers={}, sslpeer={})
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(25)
    await the_resolver.aclose()
    the_rollouts.close()
    return {
        "iterations": iterations,
        "microseconds": {k: round(v, 1) for k, v in steps.items()},
        "profile_by_own_time": _trim(text.getvalue()),
        "revision_memory": _revision_memory(rollouts.CAPACITY),
    }


def _revision_memory(count: int) -> dict[str, Any]:
    """Bytes held per remembered revision (one image each), everything it keeps included."""
    memory = rollouts.Rollouts(lambda *_: [], lambda *_: None, capacity=count)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for index in range(count):
        template_hash = uuid.uuid4().hex[:10]
        revision = revisions.Revision(
            f"team-{index % 50}",
            "ReplicaSet",
            f"service-{index:05d}-{template_hash}",
            str(uuid.uuid4()),
            template_hash,
            f"pod-template-hash={template_hash}",
        )
        image = f"111122223333.dkr.ecr.eu-west-1.amazonaws.com/team/service-{index:05d}:v1.2.3"
        digest = references.Digest(f"sha256:{index:064x}")
        verdict = decisions.Verdict(
            True, (), (), (), {}, (), revision_digests={image: digest}, repins=()
        )
        memory.record(revision, {}, verdict, unread=False)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    memory.close()
    return {"revisions": count, "bytes": held, "bytes_per_revision": round(held / count)}


def _trim(profile: str) -> str:
    """The profile without blank lines and with paths shortened to the package."""
    lines = (line.rstrip() for line in profile.splitlines() if line.strip())
    return "\n".join(_PATH_PREFIX.sub("", line) for line in lines)


def run(iterations: int = 5000) -> dict[str, Any]:
    return asyncio.run(_run(iterations))


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
