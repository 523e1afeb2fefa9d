"""The running-image audit at the edge: list the pods, ask the registries, report.

`Auditor.run` is one cycle, shared by `digestguard audit` and the serve process: the
pods are read a page at a time (`core/audit.Inventory`), every running digest and
every tag they follow is asked once (`core/audit.queries`) through a resolver of the
cycle's own, and each running image gets its state (`core/audit.findings`).

**Never from an old cache.** A cycle's resolver is made for that cycle and closed after
it, so every answer is what the registry says now: an admission cache entry seconds
old would hide a digest deleted since. Within the cycle it still batches: one
`lookup` per repository, which the ECR client sends as one BatchGetImage per 100
image ids.

`PeriodicAudit` runs cycles in the serve process, in threads of its own (never on the
admission event loop), while this replica holds the audit Lease (`serving/leases.py`),
and reports them: metrics, log lines, and one Warning Event on the owner of each gone
or archived image. What was posted is remembered in memory (at most `EVENT_MEMORY`
findings, forgotten once the image is back or no longer runs), so a finding is posted
once, not every cycle; a new holder of the Lease (a restart, a rollout) does not know
what the last one posted and posts each standing finding once more.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final

from webhook import errors, metrics, names
from webhook.core import audit, outcomes, references
from webhook.registries import protocol, resolver
from webhook.serving import leases

logger = logging.getLogger("digestguard.audit")

BUDGET_SECONDS: Final = 60.0
"""Time for all registry lookups of one cycle."""
WORKERS: Final = 4
"""Threads making one cycle's registry calls: the audit is a light user of ECR's quota."""
EVENT_MEMORY: Final = 10_000
"""Findings whose Warning Event was posted, remembered at most."""
SKIPPED_LOGGED: Final = 20
"""Skipped containers logged one by one per cycle; the rest are counted."""

PodPages = Callable[[str | None], Iterable[list[Mapping[str, Any]]]]
"""(namespace, or None for all) -> pages of pods (blocking); raises KubernetesError."""
WarningPoster = Callable[..., bool]
"""`kubeapi.post_warning`: keyword arguments, whether the Event was posted; blocking."""
UidReader = Callable[[str, str], str | None]
"""(namespace, Deployment name) -> its uid, or None when it cannot be read; blocking."""
LifecyclePreviewer = Callable[
    [outcomes.Repository, Collection[references.Digest], float], dict[references.Digest, str]
]
"""(ECR repository, running digests, timeout) -> the action its lifecycle policy would
take on each of them now (`ecr.EcrClient.lifecycle_preview`); blocking; raises
`errors.RegistryError`."""


class CallCounter:
    """Counts registry requests by operation (a client's `on_request`), across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def count(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] += 1

    def take(self) -> dict[str, int]:
        """The counts since the last `take`, and start again from zero."""
        with self._lock:
            counts = dict(self._counts)
            self._counts.clear()
        return counts


@dataclasses.dataclass(frozen=True)
class Report:
    """One audit cycle's result."""

    findings: tuple[audit.Finding, ...]
    pods: int
    skipped: tuple[audit.Skipped, ...]
    skipped_count: int
    registry_calls: Mapping[str, int]
    seconds: float
    lifecycle_problems: tuple[str, ...] = ()
    """Repositories whose lifecycle policy preview could not be read, and why."""

    @property
    def broken(self) -> tuple[audit.Finding, ...]:
        """The findings whose image cannot be pulled again (gone or archived)."""
        return tuple(f for f in self.findings if f.state in audit.BROKEN)

    def states(self) -> dict[str, int]:
        counted = collections.Counter(f.state.value for f in self.findings)
        return {state.value: counted.get(state.value, 0) for state in audit.State}


class Auditor:
    """One audit cycle at a time (blocking): see the module's docstring."""

    def __init__(
        self,
        client: protocol.RegistryClient,
        calls: CallCounter,
        *,
        pages: PodPages,
        plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP,
        budget: float = BUDGET_SECONDS,
        workers: int = WORKERS,
        lifecycle: LifecyclePreviewer | None = None,
    ) -> None:
        self._client = client
        self._lifecycle = lifecycle
        self._calls = calls
        self._pages = pages
        self._plain_http = plain_http
        self._budget = budget
        self._workers = workers

    def run(self, namespace: str | None = None) -> Report:
        """Audit the pods of `namespace` (None: all). Raises `errors.KubernetesError`
        when the pods cannot be listed; a registry that cannot answer is `unknown`."""
        started = time.monotonic()
        self._calls.take()
        inventory = audit.Inventory()
        for page in self._pages(namespace):
            inventory.add(page, plain_http=self._plain_http)
        answers = asyncio.run(self._resolve(audit.queries(inventory.running)))
        found = audit.findings(inventory, answers)
        problems: list[str] = []
        if self._lifecycle is not None:
            acting, problems = self._previews(
                self._lifecycle, audit.preview_digests(found), started + self._budget
            )
            if acting:
                found = audit.findings(inventory, answers, acting)
        return Report(
            findings=tuple(found),
            pods=inventory.pods,
            skipped=tuple(inventory.skipped),
            skipped_count=inventory.skipped_count,
            registry_calls=self._calls.take(),
            seconds=time.monotonic() - started,
            lifecycle_problems=tuple(problems),
        )

    def _previews(
        self,
        lifecycle: LifecyclePreviewer,
        wanted: Mapping[outcomes.Repository, set[references.Digest]],
        deadline: float,
    ) -> tuple[dict[outcomes.Query, str], list[str]]:
        """The lifecycle actions by digest query of every repository in `wanted`, a few
        repositories at a time; and the repositories whose preview could not be read."""
        acting: dict[outcomes.Query, str] = {}
        problems: list[str] = []
        if not wanted:
            return acting, problems
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix="digestguard-lifecycle"
        ) as pool:
            futures = {
                pool.submit(lifecycle, repository, digests, deadline - time.monotonic()): (
                    repository
                )
                for repository, digests in wanted.items()
            }
            for future in concurrent.futures.as_completed(futures):
                repository = futures[future]
                try:
                    actions = future.result()
                except errors.DigestguardError as error:
                    problems.append(f"{repository}: {error}")
                    continue
                except Exception as error:
                    logger.exception(
                        "lifecycle preview failed", extra={"repository": str(repository)}
                    )
                    problems.append(f"{repository}: {error!r}")
                    continue
                for digest, action in actions.items():
                    acting[outcomes.Query(repository, digest=digest)] = action
        problems.sort()
        return acting, problems

    async def _resolve(
        self, queries: Iterable[outcomes.Query]
    ) -> dict[outcomes.Query, outcomes.Outcome]:
        # A resolver of the cycle's own: nothing it answers comes from before the cycle.
        cycle = resolver.Resolver(self._client, workers=self._workers, measured=False)
        try:
            return await cycle.resolve(
                dict.fromkeys(queries, 0.0), deadline=time.monotonic() + self._budget
            )
        finally:
            await cycle.aclose()


class PeriodicAudit:
    """Audit cycles every `interval` seconds while this replica holds `lease`, in threads."""

    def __init__(
        self,
        auditor: Auditor,
        lease: leases.Lease,
        *,
        interval: float,
        post_warning: WarningPoster,
        deployment_uid: UidReader,
        reporter: str,
        retry_period: float = leases.RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auditor = auditor
        self._lease = lease
        self._interval = interval
        self._post_warning = post_warning
        self._deployment_uid = deployment_uid
        self._reporter = reporter
        self._retry_period = retry_period
        self._clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._posted: collections.OrderedDict[tuple[audit.Running, audit.State], None] = (
            collections.OrderedDict()
        )

    def start(self) -> None:
        for target, name in (
            (self._hold_lease, "digestguard-audit-lease"),
            (self._audit, "digestguard-audit"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "running-image audit on",
            extra={
                "interval": self._interval,
                "lease": f"{self._lease.namespace}/{self._lease.name}",
                "identity": self._lease.identity,
            },
        )

    def stop(self, within: float = 5.0) -> None:
        """Stop the threads (a cycle in progress is left to end on its own) and give the
        Lease up, so another replica audits next."""
        self._stop.set()
        for thread in self._threads:
            thread.join(within)
        self._lease.release()
        metrics.AUDIT_LEADER.set(0)

    def _hold_lease(self) -> None:
        while not self._stop.is_set():
            metrics.AUDIT_LEADER.set(1 if self._lease.try_hold() else 0)
            self._stop.wait(self._retry_period)

    def _audit(self) -> None:
        due = self._clock()
        reporting = False
        while not self._stop.is_set():
            if self._lease.held:
                if self._clock() >= due:
                    reporting = self.cycle() is not None or reporting
                    due = self._clock() + self._interval
            elif reporting:
                # Another replica audits now: its gauges count the images, not ours too.
                _clear_gauges()
                reporting = False
                due = self._clock()
            self._stop.wait(min(1.0, max(0.05, due - self._clock())))

    def cycle(self) -> Report | None:
        """One cycle, reported; None when it failed (logged and counted)."""
        started = self._clock()
        try:
            report = self._auditor.run()
        except errors.KubernetesError as error:
            metrics.AUDIT_CYCLES.labels("failed").inc()
            logger.warning("audit cycle failed", extra={"problem": str(error)})
            return None
        except Exception:
            metrics.AUDIT_CYCLES.labels("failed").inc()
            logger.exception("audit cycle failed")
            return None
        finally:
            metrics.AUDIT_CYCLE_SECONDS.observe(self._clock() - started)
        self._report(report)
        metrics.AUDIT_CYCLES.labels("ok").inc()
        return report

    def _report(self, report: Report) -> None:
        _clear_gauges()
        for (namespace, kind, state), count in audit.counts(report.findings).items():
            metrics.AUDIT_IMAGES.labels(namespace, kind, state.value).set(count)
        for operation, count in report.registry_calls.items():
            metrics.AUDIT_REGISTRY_CALLS.labels(operation).set(count)
        metrics.AUDIT_SKIPPED.set(report.skipped_count)
        for skipped in report.skipped[:SKIPPED_LOGGED]:
            logger.info("audit skipped a container", extra=dataclasses.asdict(skipped))
        for problem in report.lifecycle_problems[:SKIPPED_LOGGED]:
            logger.warning("cannot read a lifecycle policy preview", extra={"problem": problem})
        self._post_events(report.broken)
        self._forget(report)
        logger.info(
            "audit cycle done",
            extra={
                "pods": report.pods,
                "images": len(report.findings),
                "states": report.states(),
                "skipped": report.skipped_count,
                "registry_calls": dict(report.registry_calls),
                "seconds": round(report.seconds, 3),
            },
        )

    def _post_events(self, broken: Iterable[audit.Finding]) -> None:
        for finding in broken:
            key = (finding.running, finding.state)
            if key in self._posted:
                self._posted.move_to_end(key)
                continue
            running = finding.running
            logger.warning(
                "a running image can no longer be pulled",
                extra={
                    "namespace": running.namespace,
                    "owner": str(running.owner),
                    "container": running.container_label,
                    "image": running.image,
                    "digest": running.digest,
                    "state": finding.state.value,
                    "problem": finding.detail,
                },
            )
            reason = (
                names.REASON_RUNNING_IMAGE_ARCHIVED
                if finding.state is audit.State.ARCHIVED
                else names.REASON_RUNNING_IMAGE_GONE
            )
            target, uid = self._event_target(running)
            posted = self._post_warning(
                namespace=running.namespace,
                api_version=target.api_version,
                kind=target.kind,
                name=target.name,
                uid=uid,
                reason=reason,
                message=audit.warning_message(finding),
                reporter=self._reporter,
            )
            if not posted:
                continue  # tried again next cycle
            metrics.AUDIT_EVENTS.labels(reason).inc()
            self._posted[key] = None
            while len(self._posted) > EVENT_MEMORY:
                self._posted.popitem(last=False)

    def _event_target(self, running: audit.Running) -> tuple[audit.Owner, str]:
        """The object to post on, and its uid (which `kubectl describe` selects Events by):
        a Deployment derived from its ReplicaSet's name is read for its uid, and when it
        cannot be read the Event goes to the ReplicaSet."""
        owner = running.owner
        if owner.uid or owner.kind != "Deployment":
            return owner, owner.uid
        uid = self._deployment_uid(running.namespace, owner.name)
        if uid is not None:
            return owner, uid
        if running.controller is not None:
            return running.controller, running.controller.uid
        return owner, ""

    def _forget(self, report: Report) -> None:
        """Forget what was posted about images that are fine again or no longer run; keep
        what the registry could not tell about this time (not posted again after a blip)."""
        unknown = {
            (f.running, state)
            for f in report.findings
            if f.state is audit.State.UNKNOWN
            for state in audit.BROKEN
        }
        standing = {(f.running, f.state) for f in report.broken} | unknown
        for key in [key for key in self._posted if key not in standing]:
            del self._posted[key]


def _clear_gauges() -> None:
    """Forget the last cycle's gauges (images by state, calls, skipped containers)."""
    metrics.AUDIT_IMAGES.clear()
    metrics.AUDIT_REGISTRY_CALLS.clear()
    metrics.AUDIT_SKIPPED.set(0)
