"""One revision, one digest: what the pods of each controller revision run.

The pods of a ReplicaSet (or of a StatefulSet, DaemonSet or Job revision) must all
run the digest its first pods were pinned to, even after their tag has moved and
the cache has expired, and whichever replica of the webhook answers. So for the pod
of a revision this replica knows nothing about, the revision's pods are read from
the apiserver (their `original-images` annotation beside the pinned images: what
the others pinned, before a restart too); what this replica pins itself is
remembered. A revision none of whose pods is pinned yet is resolved afresh: its
first pod is pinned to what the registry says now, not to an older cache entry, so
that two replicas pinning first pods at once agree unless the tag moves between
their two lookups.

What is remembered is bounded (`capacity` revisions, least recently used first),
and read again from the apiserver every `recheck_after` seconds a revision is used,
so replicas that disagreed (two first pods at once across a tag move) converge on
the digest of the revision's oldest pinned pod.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from webhook import errors, metrics, names
from webhook.core import decisions, references, revisions

logger = logging.getLogger("digestguard.rollouts")

PodLister = Callable[[str, str, int, float], list[Mapping[str, Any]]]
"""(namespace, label selector, limit, timeout) -> pods; blocking; raises KubernetesError."""
WarningPoster = Callable[[revisions.Revision, str, str], None]
"""(owner revision, reason, message): post a Warning Event on the owner; blocking."""

CAPACITY: Final = 10_000
"""Revisions remembered at most (about 1 KiB each)."""
RECHECK_SECONDS: Final = 300.0
"""How long what a revision's pods run is trusted before it is read again, when used."""
RETRY_UNREAD_SECONDS: Final = 30.0
"""After the apiserver could not list a revision's pods, how long before asking again."""
LIST_LIMIT: Final = 50
"""Pods of a revision read at most: pinned alike, a few are enough."""
MAX_LISTING: Final = 8
"""Lists of pods at once; past that a revision is taken as unread rather than queue."""
LIST_TIMEOUT: Final = 1.0
"""Seconds a list of pods may take (never more than half the admission's time left)."""


_PINS: Final = {
    how: metrics.ROLLOUT_PINS.labels(how) for how in ("revision", "first", "gone", "unread")
}


@dataclasses.dataclass(slots=True)
class _Known:
    digests: dict[str, references.Digest]
    checked_at: float
    """When the revision's pods were last read (or should be taken as read)."""


class Rollouts:
    """The digests each controller revision's pods run, for the admission handler."""

    def __init__(
        self,
        list_pods: PodLister,
        post_warning: WarningPoster,
        *,
        plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP,
        capacity: int = CAPACITY,
        recheck_after: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list_pods = list_pods
        self._post_warning = post_warning
        self._plain_http = plain_http
        self._capacity = capacity
        self._recheck_after = recheck_after
        self._clock = clock
        self._known: collections.OrderedDict[revisions.Revision, _Known] = collections.OrderedDict()
        self._listing: dict[revisions.Revision, asyncio.Future[dict[str, references.Digest]]] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=MAX_LISTING, thread_name_prefix="digestguard-rollouts"
        )
        self._posted: collections.OrderedDict[tuple[revisions.Revision, str, str], None] = (
            collections.OrderedDict()
        )
        self._tasks: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._known)

    async def in_use(
        self, revision: revisions.Revision, images: frozenset[str], *, deadline: float
    ) -> tuple[dict[str, references.Digest], str | None]:
        """The digests the revision's pods run for `images` (those it runs), and why the
        revision's pods could not be read, if they could not."""
        now = self._clock()
        known = self._known.get(revision)
        if known is not None:
            self._known.move_to_end(revision)
            fresh = now - known.checked_at < self._recheck_after
            if fresh and images <= known.digests.keys():
                return _only(known.digests, images), None
            if fresh and not revision.selector:
                return _only(known.digests, images), None
        if not revision.selector:
            # Nothing finds its pods (a ReplicationController's pods without labels).
            return (_only(known.digests, images) if known else {}), None
        problem: str | None = None
        listed: dict[str, references.Digest] = {}
        try:
            listed = await self._read(revision, deadline)
        except errors.KubernetesError as error:
            problem = str(error)
        except TimeoutError:
            problem = "the apiserver did not list them in time"
        now = self._clock()
        known = self._known.get(revision)
        if problem is not None:
            logger.warning(
                "cannot read the pods of a revision; pinning from the registry",
                extra={"revision": str(revision), "problem": problem},
            )
            if known is not None:
                known.checked_at = now - self._recheck_after + RETRY_UNREAD_SECONDS
            return (_only(known.digests, images) if known else {}), problem
        if known is None:
            known = self._store(revision, _Known({}, now))
        # What the pods run wins over what this replica pinned; its own pins not seen
        # yet (pods being created) stay.
        known.digests.update(listed)
        known.checked_at = now
        return _only(known.digests, images), None

    def record(
        self,
        revision: revisions.Revision,
        in_use: Mapping[str, references.Digest],
        verdict: decisions.Verdict,
        *,
        unread: bool,
    ) -> None:
        """Remember what a pod of `revision` was pinned to; count it; report gone digests."""
        known = self._known.get(revision)
        if known is None:
            now = self._clock()
            # Unread: its pods are read again soon, not at the very next pod.
            checked = now - self._recheck_after + RETRY_UNREAD_SECONDS if unread else now
            known = self._store(revision, _Known({}, checked))
        repinned = {repin.image for repin in verdict.repins}
        for image, digest in verdict.revision_digests.items():
            if image in repinned:
                how = "gone"
                known.digests[image] = digest
            elif in_use.get(image) == digest:
                how = "revision"
            else:
                how = "unread" if unread else "first"
                known.digests.setdefault(image, digest)
            _PINS[how].inc()
        for repin in verdict.repins:
            if repin.image not in verdict.revision_digests:
                # Not pinned (the tag is gone too, or the pod was denied): still reported.
                _PINS["gone"].inc()
            self._report_gone(revision, repin)

    def _report_gone(self, revision: revisions.Revision, repin: decisions.Repin) -> None:
        key = (revision, repin.image, repin.gone)
        if key in self._posted:
            return
        self._posted[key] = None
        while len(self._posted) > self._capacity:
            self._posted.popitem(last=False)
        now = f"pinned to {repin.digest}" if repin.digest is not None else "not pinned"
        message = (
            f"{repin.container}: the digest {repin.gone} of {repin.image}, which the pods of"
            f" this revision run, can no longer be pulled ({repin.why}); a new pod was"
            f" {now}. Pods that still run the old digest cannot be pulled again: restore the"
            " image, or roll out (kubectl rollout restart) to move every pod to the tag's"
            " digest."
        )
        logger.warning(
            "a revision's digest is gone from the registry",
            extra={"revision": str(revision), "image": repin.image, "digest": repin.gone},
        )
        loop = asyncio.get_running_loop()
        task = loop.run_in_executor(
            self._executor,
            self._post_warning,
            revision,
            names.REASON_REVISION_DIGEST_GONE,
            message,
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(
        self, revision: revisions.Revision, deadline: float
    ) -> dict[str, references.Digest]:
        """What the revision's pods run, one list of pods at a time per revision."""
        flight = self._listing.get(revision)
        if flight is None:
            if len(self._listing) >= MAX_LISTING:
                raise errors.KubernetesError("too many lists of pods at once", 0)
            timeout = min(LIST_TIMEOUT, (deadline - self._clock()) / 2)
            if timeout <= 0:
                raise errors.KubernetesError("no time was left to list them", 0)
            loop = asyncio.get_running_loop()
            flight = loop.run_in_executor(self._executor, self._digests_of, revision, timeout)
            self._listing[revision] = flight
            flight.add_done_callback(functools.partial(self._landed, revision))
        return await asyncio.wait_for(asyncio.shield(flight), max(0.0, deadline - self._clock()))

    def _landed(
        self, revision: revisions.Revision, flight: "asyncio.Future[dict[str, references.Digest]]"
    ) -> None:
        if self._listing.get(revision) is flight:
            del self._listing[revision]

    def _digests_of(
        self, revision: revisions.Revision, timeout: float
    ) -> dict[str, references.Digest]:
        pods = self._list_pods(revision.namespace, revision.selector, LIST_LIMIT, timeout)
        return revisions.digests_in_use(revision, pods, plain_http=self._plain_http)

    def _store(self, revision: revisions.Revision, known: _Known) -> _Known:
        self._known[revision] = known
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)
        metrics.ROLLOUT_REVISIONS.set(len(self._known))
        return known

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _only(
    digests: Mapping[str, references.Digest], images: frozenset[str]
) -> dict[str, references.Digest]:
    return {image: digests[image] for image in images if image in digests}
