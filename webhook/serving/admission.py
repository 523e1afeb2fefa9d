"""The kopf edge: the only module that imports kopf.

It registers the admission handlers (one id per webhook path), the indexes of
DigestPolicies and namespace labels, and the policy status reporter; builds the
request model for the decision core; and turns verdicts into what kopf sends back.
"""

import asyncio
import base64
import contextvars
import dataclasses
import datetime
import functools
import itertools
import json
import logging
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import kopf
from kopf._core.reactor import inventory

from webhook import errors, metrics, names
from webhook.core import containers, decisions, outcomes, policies, references
from webhook.registries import resolver, routing
from webhook.serving import podsecrets, rollouts, server

logger = logging.getLogger("digestguard.admission")

POLICY_INDEX = "policy_index"
NAMESPACE_INDEX = "namespace_index"

NamespaceReader = Callable[[str], Awaitable[dict[str, str] | None]]

OFFLOAD_CONTAINERS: Final = 64
"""Above this many containers, a pod is planned and decided off the event loop."""
DECIDE_MARGIN: Final = 0.2
"""Seconds kept, after the registry lookups, to decide and send the answer."""


@dataclasses.dataclass
class _PatchSlot:
    encoded: str = ""
    """The JSON patch, as the response carries it: base64 of its JSON."""


_PATCH: contextvars.ContextVar[_PatchSlot | None] = contextvars.ContextVar(
    "digestguard_patch", default=None
)
"""Where a handler puts the JSON patch of the admission it is answering (see `_DirectPatch`)."""


class _AdmissionOnlyMemories(inventory.ResourceMemories):
    """kopf keeps a memory per object uid for every non-CREATE admission and never
    forgets it unless it also watches that resource: with a stream of pod UPDATEs
    that grows without bound. Admission memos are never used here, so none is kept."""

    async def recall_memo(
        self, raw_body: Any, *, memobase: Any = None, ephemeral: bool = False
    ) -> Any:
        return await super().recall_memo(raw_body, memobase=memobase, ephemeral=True)


class _DirectPatch:
    """The admission server, handed to kopf with a webhook function that attaches our patch.

    kopf makes a mutating response's JSON patch by deep-copying the whole object,
    applying the handler's functions to the copy and diffing the two with jsonpatch:
    250 µs of the 1.15 ms of CPU a warm 3-container pod admission took, the largest
    single cost. The verdict already names every field it changes, so the handler
    writes the patch itself and this wrapper puts it into kopf's response.
    """

    def __init__(self, server: server.AdmissionServer) -> None:
        self._server = server

    def __call__(self, fn: server.ReviewFn) -> AsyncIterator[dict[str, Any]]:
        async def review(request: Any, **kwargs: Any) -> Any:
            slot = _PatchSlot()
            token = _PATCH.set(slot)
            try:
                response = await fn(request, **kwargs)
            finally:
                _PATCH.reset(token)
            payload = response.get("response", {})
            if slot.encoded and payload.get("allowed") and "patch" not in payload:
                payload["patch"] = slot.encoded
                payload["patchType"] = "JSONPatch"
            return response

        return self._server(review)


@dataclasses.dataclass
class Admission:
    """Everything the handlers share, passed in rather than global."""

    resolver: resolver.Resolver
    own_namespace: str
    resolve_deadline: float
    read_namespace_labels: NamespaceReader
    plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP
    """Registries reached over plain HTTP: their `:80` is the default port of a reference."""
    clock: Callable[[], float] = time.monotonic
    rollouts: "rollouts.Rollouts | None" = None
    """Where the digests of controller revisions are kept (None: every pod on its own)."""
    pod_secrets: "podsecrets.PodSecrets | None" = None
    """A pod's own pull Secrets, for its images (None: not used, `--pod-pull-secrets`)."""
    indexes_loaded: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    _parsed: "_ParsedPolicies" = dataclasses.field(default_factory=lambda: _ParsedPolicies())
    waiting_on_registry: int = dataclasses.field(default=0, init=False)
    """Admissions whose handler is waiting for registry lookups now."""

    def registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        kopf.on.login(id="login", registry=registry)(kopf.login_via_client)
        policy_resource = (names.GROUP, names.VERSION, names.PLURAL)
        kopf.index(*policy_resource, id=POLICY_INDEX, registry=registry)(self._parsed.index)
        kopf.index("namespaces", id=NAMESPACE_INDEX, registry=registry)(_index_namespace)
        kopf.on.event(*policy_resource, id="policy-status", registry=registry)(
            functools.partial(_report_policy_status, self._parsed)
        )
        kopf.on.event("namespaces", id="indexes-loaded", registry=registry)(
            self._mark_indexes_loaded
        )
        operations: list[kopf.Operation] = ["CREATE", "UPDATE"]
        # subresource="*": the subresource is checked by the server's routing table.
        for handler_id in names.MUTATING_HANDLERS:
            kopf.on.mutate(
                "pods", id=handler_id, subresource="*", operations=operations, registry=registry
            )(functools.partial(self._handle, decisions.Phase.MUTATING))
        for handler_id in (names.VALIDATE_PODS, names.VALIDATE_EPHEMERAL):
            kopf.on.validate(
                "pods", id=handler_id, subresource="*", operations=operations, registry=registry
            )(functools.partial(self._handle, decisions.Phase.VALIDATING))
        for handler_id, group, version, plural in names.WORKLOADS:
            resource = (group, version, plural) if group else (plural,)
            kopf.on.validate(*resource, id=handler_id, operations=operations, registry=registry)(
                functools.partial(self._handle, decisions.Phase.VALIDATING)
            )
        return registry

    async def run(
        self,
        server: server.AdmissionServer,
        *,
        stop_flag: asyncio.Event,
        ready_flag: asyncio.Event | None = None,
    ) -> None:
        """Run kopf with this admission's handlers until `stop_flag` is set."""
        settings = kopf.OperatorSettings()
        # kopf types only its own servers.
        settings.admission.server = typing.cast(Any, _DirectPatch(server))
        settings.admission.managed = None  # the Helm chart owns the webhook configurations
        settings.posting.enabled = False  # no Events RBAC needed; logs carry everything
        settings.scanning.disabled = True  # no CRD/namespace list RBAC needed
        settings.watching.server_timeout = 300
        await kopf.operator(
            registry=self.registry(),
            settings=settings,
            memories=_AdmissionOnlyMemories(),
            clusterwide=True,
            standalone=True,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )

    async def _mark_indexes_loaded(self, **_: Any) -> None:
        # kopf runs no event handler before every index has its initial listing.
        if not self.indexes_loaded.is_set():
            logger.info("policies and namespaces indexed")
            self.indexes_loaded.set()

    async def _handle(
        self,
        phase: decisions.Phase,
        *,
        body: kopf.Body,
        old: kopf.Body | None,
        operation: str | None,
        warnings: list[str],
        **kwargs: Any,
    ) -> None:
        # kopf does not enforce `operations=` at request time.
        if operation not in ("CREATE", "UPDATE"):
            return
        _skip_kopfs_copy(kwargs.get("patch"))
        obj = _raw(body)
        verdict = await self.decide(
            phase,
            obj=obj,
            old=_raw(old) if old is not None else None,
            operation=operation,
            policy_index=kwargs[POLICY_INDEX],
            namespace_index=kwargs[NAMESPACE_INDEX],
        )
        if verdict is None:
            return
        warnings.extend(verdict.warnings)
        for finding in verdict.findings:
            metrics.VIOLATIONS.labels(finding.policy.action.value, finding.reason).inc()
            logger.log(
                logging.WARNING if finding.denies else logging.INFO,
                finding.message,
                extra={
                    "namespace": _namespace(obj),
                    "object": _object_name(obj),
                    "container": finding.subject.container.label,
                    "image": finding.subject.container.shown_image,
                    "policy": finding.policy.name,
                    "action": finding.policy.action.value,
                    "reason": finding.reason,
                    "denied": finding.denies,
                },
            )
        if not verdict.allowed:
            raise kopf.AdmissionError(verdict.message, code=403)
        if verdict.edits:
            slot = _PATCH.get()
            if slot is None:  # not served through `_DirectPatch`: never pass a pod unpinned
                raise kopf.AdmissionError(
                    "digestguard cannot attach its patch to this response", code=500
                )
            # Thousands of edits (a pod of thousands of containers) are encoded in a thread.
            slot.encoded = await _run(
                len(verdict.edits) >= OFFLOAD_CONTAINERS,
                functools.partial(_encoded_patch, obj, verdict),
            )

    async def decide(
        self,
        phase: decisions.Phase,
        *,
        obj: Mapping[str, Any],
        old: Mapping[str, Any] | None,
        operation: str,
        policy_index: Mapping[Any, Any],
        namespace_index: Mapping[Any, Any],
    ) -> decisions.Verdict | None:
        """The verdict for one admission, or None when no policy has anything to say."""
        namespace = _namespace(obj)
        if namespace == self.own_namespace:
            return None
        active = _policies(policy_index)
        if not active:
            return None
        deadline = self.clock() + self.resolve_deadline
        answer_by = server.REQUEST_DEADLINE.get()
        if answer_by is not None:
            # The apiserver may allow less than --resolve-deadline (`?timeout=`): decide
            # with what the registry said by then, rather than be cut off undecided.
            deadline = min(deadline, answer_by - DECIDE_MARGIN)
        labels = await self._namespace_labels(namespace, namespace_index)
        review = decisions.Review(operation=operation, namespace=namespace, obj=obj, old=old)
        # A pod of thousands of containers is planned and decided in a thread, so the
        # event loop goes on answering other admissions meanwhile.
        offload = _many_containers(obj) or _many_containers(old)
        the_plan = await _run(
            offload,
            functools.partial(
                decisions.plan, review, active, labels, phase, plain_http=self.plain_http
            ),
        )
        if not the_plan.subjects:
            return None
        revision = the_plan.revision if self.rollouts is not None else None
        in_use: dict[str, references.Digest] = {}
        unread: str | None = None
        # Counted as waiting on the registry, not as being decided (see the server's
        # `max_deciding`). Answered from the cache, this returns without yielding:
        # nothing else sees the count.
        self.waiting_on_registry += 1
        try:
            if revision is not None and self.rollouts is not None and the_plan.rollout_images:
                in_use, unread = await self.rollouts.in_use(
                    revision, the_plan.rollout_images, deadline=deadline
                )
                the_plan = decisions.follow_revision(the_plan, in_use)
            queries, recheck = the_plan.queries, the_plan.recheck
            scoped: dict[outcomes.Query, outcomes.Query] | None = None
            credentials = podsecrets.NONE
            if self.pod_secrets is not None:
                if any(
                    not routing.is_ecr_private(query.repository.registry)
                    for query in the_plan.queries
                ):
                    # Half the time left at most: the registry needs the rest.
                    credentials = await self.pod_secrets.for_pod(
                        namespace,
                        containers.pod_spec(obj),
                        within=max(0.0, (deadline - self.clock()) / 2),
                    )
                scoped = _scoped(the_plan.queries, credentials)
                queries = {scoped[query]: stale for query, stale in the_plan.queries.items()}
                recheck = frozenset(scoped[query] for query in the_plan.recheck)
            resolving = self.resolver.resolve(queries, deadline=deadline, recheck=recheck)
            mutabilities: Mapping[outcomes.Repository, outcomes.MutabilityOutcome] = {}
            if the_plan.repositories_for_mutability:
                results, mutabilities = await asyncio.gather(
                    resolving,
                    self.resolver.mutability(
                        the_plan.repositories_for_mutability, deadline=deadline
                    ),
                )
            else:
                # Awaited directly, cache hits answer without a turn of the event loop
                # (gather would make a task of it).
                results = await resolving
            if scoped is not None:
                results = {
                    query: _with_secrets_tried(results[scoped[query]], query, credentials)
                    for query in the_plan.queries
                }
        finally:
            self.waiting_on_registry -= 1
        verdict = await _run(
            offload, functools.partial(decisions.decide, the_plan, results, mutabilities)
        )
        if revision is not None and self.rollouts is not None and the_plan.rollout_images:
            self.rollouts.record(revision, in_use, verdict, unread=unread is not None)
            if unread is not None and verdict.revision_digests:
                note = (
                    f"the pods of {revision} could not be read ({unread}): pinned to the"
                    " registry's digest, which later pods of this revision may not share"
                    f" [{names.REASON_REVISION_UNREAD}]"
                )
                verdict = dataclasses.replace(verdict, warnings=(*verdict.warnings, note))
        return verdict

    async def _namespace_labels(self, namespace: str, index: Mapping[Any, Any]) -> dict[str, str]:
        if not namespace:
            return {}
        for labels in index.get(namespace, ()):
            return dict(labels)
        # A namespace created a moment before its first pod may not be indexed yet.
        labels = await self.read_namespace_labels(namespace)
        return labels if labels is not None else {}


_T = TypeVar("_T")


def _scoped(
    queries: Iterable[outcomes.Query], credentials: podsecrets.PodCredentials
) -> dict[outcomes.Query, outcomes.Query]:
    """Each query as it is asked: with the credential scope of the pod's pull Secret for
    its registry, when it has one (ECR private registries use IAM, never a Secret)."""
    scoped = {}
    for query in queries:
        registry = query.repository.registry
        scope = "" if routing.is_ecr_private(registry) else credentials.scope_of(registry)
        scoped[query] = dataclasses.replace(query, scope=scope) if scope else query
    return scoped


def _with_secrets_tried(
    outcome: outcomes.Outcome, query: outcomes.Query, credentials: podsecrets.PodCredentials
) -> outcomes.Outcome:
    """A "could not tell" of a registry outside ECR says which pull Secrets were tried."""
    registry = query.repository.registry
    if not isinstance(outcome, outcomes.Unknown) or routing.is_ecr_private(registry):
        return outcome
    return dataclasses.replace(
        outcome, message=f"{outcome.message}; {credentials.tried_for(registry)}"
    )


async def _run(in_thread: bool, fn: Callable[[], _T]) -> _T:
    return await asyncio.to_thread(fn) if in_thread else fn()


def _encoded_patch(obj: Mapping[str, Any], verdict: decisions.Verdict) -> str:
    return base64.b64encode(json.dumps(decisions.json_patch(obj, verdict)).encode()).decode()


def _raw(body: kopf.Body) -> Mapping[str, Any]:
    """The object as the AdmissionReview carried it, under kopf's view of it.

    Every read through a `kopf.Body` resolves its path again through nested views:
    walking a pod's containers that way cost about 25 µs a warm admission. The
    decision core only reads the object, so it reads the decoded JSON directly.
    """
    source = getattr(body, "_src", None)
    return source if isinstance(source, Mapping) and not isinstance(source, kopf.Body) else body


def _skip_kopfs_copy(patch: Any) -> None:
    """Let kopf's (empty) patch of this admission answer without copying the object.

    kopf's `Patch.as_json_patch` deep-copies the whole object before it looks whether
    the patch holds anything: 220 ms of event-loop time for a pod of 10,000 containers.
    These handlers never write kopf's patch (the verdict's patch goes through
    `_DirectPatch`), so while it is empty it answers "no operations" at once, exactly as
    kopf would after the copy.
    """
    if not isinstance(patch, kopf.Patch):
        return
    build = patch.as_json_patch

    def as_json_patch(body: Any = None) -> Any:
        return build(body) if patch else []

    patch.__dict__["as_json_patch"] = as_json_patch


def _many_containers(obj: Mapping[str, Any] | None) -> bool:
    """Whether `obj` has more containers than are worth deciding on the event loop."""
    if obj is None:
        return False
    walked = containers.walk(obj)
    return any(True for _ in itertools.islice(walked, OFFLOAD_CONTAINERS, None))


def _policies(index: Mapping[Any, Any]) -> list[policies.Policy]:
    return [
        value for store in index.values() for value in store if isinstance(value, policies.Policy)
    ]


class _ParsedPolicies:
    """Each DigestPolicy parsed once per generation, by kopf's indexer.

    kopf runs the (synchronous) indexer in a thread, so a policy of thousands of globs
    is parsed and its glob index built off the event loop. Every watch event calls it,
    also the ones that only change the status (as the status report does), so the
    parse is kept per uid and generation: the apiserver bumps `generation` whenever the
    spec changes (the CRD has a status subresource). The status report reads the result
    from here rather than parsing again on the event loop.
    """

    def __init__(self) -> None:
        self._by_uid: dict[str, tuple[int, policies.Policy | str]] = {}

    def index(
        self, name: str, uid: str | None, spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any
    ) -> dict[str, policies.Policy | str]:
        return {name: self.parsed(name, uid, spec, meta)}

    def parsed(
        self, name: str, uid: str | None, spec: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> policies.Policy | str:
        """The policy, or why it is invalid."""
        generation = int(meta.get("generation", 0))
        kept = self._by_uid.get(uid) if uid else None
        if kept is not None and kept[0] == generation:
            return kept[1]
        result: policies.Policy | str
        try:
            result = policies.parse(name, generation, spec)
        except errors.InvalidPolicy as error:
            result = str(error)
        if uid:
            self._by_uid[uid] = (generation, result)
        return result

    def forget(self, uid: str | None) -> None:
        if uid:
            self._by_uid.pop(uid, None)


def _index_namespace(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


async def _report_policy_status(
    parsed: _ParsedPolicies,
    type: str | None,
    name: str,
    uid: str | None,
    spec: Mapping[str, Any],
    meta: Mapping[str, Any],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    index: Mapping[Any, Any] = kwargs[POLICY_INDEX]
    accepted = _policies(index)
    metrics.POLICIES_LOADED.set(len(accepted))
    metrics.POLICIES_REJECTED.set(sum(len(store) for store in index.values()) - len(accepted))
    if type == "DELETED":
        parsed.forget(uid)
        return
    generation = int(meta.get("generation", 0))
    # kopf indexes an event before handling it, so this is normally the indexer's
    # result looked up; in a thread all the same, should it have to parse.
    result = await asyncio.to_thread(parsed.parsed, name, uid, spec, meta)
    if isinstance(result, policies.Policy):
        ready, reason, message = "True", names.REASON_ACCEPTED, "the policy is enforced"
    else:
        ready, reason, message = "False", names.REASON_INVALID, result
    current = [c for c in status.get("conditions", []) if c.get("type") == "Ready"]
    unchanged = (
        status.get("observedGeneration") == generation
        and current
        and (current[0].get("status"), current[0].get("reason"), current[0].get("message"))
        == (ready, reason, message)
    )
    if unchanged:
        return
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch.status["observedGeneration"] = generation
    patch.status["conditions"] = [
        {
            "type": "Ready",
            "status": ready,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now,
        }
    ]


def _namespace(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    return str(metadata.get("namespace") or "") if isinstance(metadata, Mapping) else ""


def _object_name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return ""
    return str(metadata.get("name") or metadata.get("generateName") or "")
