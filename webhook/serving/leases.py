"""One replica at a time: a `coordination.k8s.io/v1` Lease, acquired and renewed by its holder.

The rule is client-go's leader election, in small:

- A Lease nobody holds (none yet, an empty `holderIdentity`) is taken.
- A Lease another replica holds is taken only once it has not changed for its
  `leaseDurationSeconds`, as measured on this replica's own clock from when this
  replica saw it change: clocks of different nodes are never compared.
- The holder renews it every `retry_period`; every write carries the
  `resourceVersion` read, so of two replicas writing at once one gets a conflict and
  stays a follower.
- A holder that could not renew for `renew_deadline` (two thirds of the duration) stops
  acting as the holder before anyone else may take the Lease over.
- On shutdown the holder gives the Lease up (empty holder), so another takes over at
  its next try rather than after the duration.
"""

import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from webhook import errors

logger = logging.getLogger("digestguard.leases")

LEASE_SECONDS: Final = 15
"""How long a Lease not renewed stays with its holder (client-go's default)."""
RETRY_SECONDS: Final = 2.0
"""How often the holder renews, and a follower tries to take over."""

LeaseReader = Callable[[str, str], dict[str, Any] | None]
"""(namespace, name) -> the Lease, or None if there is none; blocking."""
LeaseWriter = Callable[[str, Mapping[str, Any], bool], dict[str, Any]]
"""(namespace, body, create) -> the Lease written; raises errors.Conflict; blocking."""


@dataclasses.dataclass
class _Observed:
    resource_version: str
    holder: str
    seen_at: float


class Lease:
    """A Lease this replica tries to hold (`try_hold`), and whether it holds it (`held`)."""

    def __init__(
        self,
        *,
        namespace: str,
        name: str,
        identity: str,
        read: LeaseReader,
        write: LeaseWriter,
        duration: int = LEASE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self._read = read
        self._write = write
        self._duration = duration
        self._renew_deadline = duration * 2 / 3
        self._clock = clock
        self._wall_clock = wall_clock
        self._observed: _Observed | None = None
        self._renewed_at: float | None = None
        self._problem = ""

    @property
    def held(self) -> bool:
        """Whether this replica holds the Lease now (renewed within the renew deadline)."""
        return self._renewed_at is not None and (
            self._clock() - self._renewed_at < self._renew_deadline
        )

    def try_hold(self) -> bool:
        """Take or renew the Lease if this replica may; whether it holds it afterwards.

        A Kubernetes API failure is logged and counts as not renewed."""
        try:
            self._try_hold()
            self._problem = ""
        except errors.Conflict:
            logger.debug("the audit Lease was written by another replica first")
        except errors.KubernetesError as error:
            # Once per problem, not every retry: a missing RBAC rule would flood the log.
            log = logger.warning if str(error) != self._problem else logger.debug
            self._problem = str(error)
            log(
                "cannot take or renew the audit Lease",
                extra={"lease": f"{self.namespace}/{self.name}", "problem": str(error)},
            )
        return self.held

    def _try_hold(self) -> None:
        now = self._clock()
        current = self._read(self.namespace, self.name)
        if current is None:
            written = self._write(self.namespace, self._body(None, transitions=0), True)
            self._took(written, now)
            return
        metadata = current.get("metadata") or {}
        spec = current.get("spec") or {}
        version = str(metadata.get("resourceVersion") or "")
        holder = str(spec.get("holderIdentity") or "")
        if self._observed is None or self._observed.resource_version != version:
            self._observed = _Observed(version, holder, now)
        duration = _seconds(spec.get("leaseDurationSeconds"), self._duration)
        if holder and holder != self.identity and now < self._observed.seen_at + duration:
            self._renewed_at = None
            return
        transitions = _seconds(spec.get("leaseTransitions"), 0)
        if holder != self.identity:
            transitions += 1
            logger.info(
                "taking the audit Lease",
                extra={"lease": f"{self.namespace}/{self.name}", "from": holder or "nobody"},
            )
        keep_acquired = spec.get("acquireTime") if holder == self.identity else None
        body = self._body(current, transitions=transitions, acquired=keep_acquired)
        self._took(self._write(self.namespace, body, False), now)

    def _took(self, written: Mapping[str, Any], at: float) -> None:
        version = str((written.get("metadata") or {}).get("resourceVersion") or "")
        self._observed = _Observed(version, self.identity, at)
        self._renewed_at = at

    def _body(
        self, current: Mapping[str, Any] | None, *, transitions: int, acquired: Any = None
    ) -> dict[str, Any]:
        now = _micro_time(self._wall_clock())
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current is not None:
            version = (current.get("metadata") or {}).get("resourceVersion")
            metadata["resourceVersion"] = version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self._duration,
                "acquireTime": acquired or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    def release(self) -> None:
        """Give the Lease up if this replica holds it, so another takes over at once."""
        if not self.held:
            return
        self._renewed_at = None
        try:
            current = self._read(self.namespace, self.name)
            if current is None or (current.get("spec") or {}).get("holderIdentity") != (
                self.identity
            ):
                return
            body = self._body(
                current, transitions=_seconds(current["spec"].get("leaseTransitions"), 0)
            )
            body["spec"]["holderIdentity"] = ""
            body["spec"]["leaseDurationSeconds"] = 1
            self._write(self.namespace, body, False)
        except errors.KubernetesError as error:
            logger.info(
                "cannot give the audit Lease up; another replica takes it once it expires",
                extra={"lease": f"{self.namespace}/{self.name}", "problem": str(error)},
            )


def _seconds(raw: Any, default: int) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else default


def _micro_time(moment: datetime.datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds, in UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
