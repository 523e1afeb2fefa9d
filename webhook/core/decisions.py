"""The decision core: from an admission request, policies and registry answers to a verdict.

It works in two pure steps around the resolver's I/O:

    plan(review, policies, namespace_labels, phase)  ->  Plan   (what to ask the registry)
    decide(plan, results, mutabilities)             ->  Verdict (allow / deny / edits / warnings)

and `json_patch(obj, verdict)` writes a Verdict's edits as the response's JSON patch.

Who does what (README, "Policies"; docs/architecture.md):

- the mutating phase works for Mutate policies only: it rewrites tag-only references
  of pods and denies images that are missing (it cannot pin them);
- the validating phase checks Enforce and Audit policies on pods, and every policy
  on workload templates (missing images; tag-only references under Enforce);
- Audit never denies: its violations are warnings.
"""

import dataclasses
import enum
import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from webhook import errors, names
from webhook.core import containers, outcomes, policies, references, revisions


class Phase(enum.Enum):
    MUTATING = "mutating"
    VALIDATING = "validating"


@dataclasses.dataclass(frozen=True)
class Review:
    """The parts of an AdmissionReview request that decisions depend on."""

    operation: str
    namespace: str
    obj: Mapping[str, Any]
    old: Mapping[str, Any] | None = None

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))


@dataclasses.dataclass(frozen=True)
class Subject:
    """One examined container image and the policies that apply to it in this phase."""

    container: containers.ContainerImage
    reference: references.ImageReference | None
    problem: str | None
    policies: tuple[policies.Policy, ...]
    max_stale_seconds: float
    revision_lookup: outcomes.Query | None = None
    """By digest, what the pod's controller revision already runs for this image
    (pinScope Rollout): pinned again while it exists (see `follow_revision`)."""

    @functools.cached_property
    def lookup(self) -> outcomes.Query | None:
        """The query whose outcome says whether the image exists (None: not a valid reference)."""
        ref = self.reference
        if ref is None:
            return None
        return outcomes.existence_query(ref)

    @functools.cached_property
    def tag_check(self) -> outcomes.Query | None:
        """For `repo:tag@digest`: the query telling whether the tag still points there."""
        ref = self.reference
        if ref is None or ref.digest is None or ref.tag is None:
            return None
        return outcomes.Query(outcomes.Repository(ref.registry, ref.repository), tag=ref.tag)

    @property
    def is_tag_only(self) -> bool:
        return self.reference is not None and self.reference.digest is None

    @property
    def pinned_per_revision(self) -> bool:
        """Whether this image is pinned for its controller revision, not for the pod alone."""
        return self.is_tag_only and all(
            p.pin_scope is policies.PinScope.ROLLOUT
            for p in self.policies
            if p.action is policies.Action.MUTATE
        )


@dataclasses.dataclass(frozen=True)
class Plan:
    phase: Phase
    kind: str
    subjects: tuple[Subject, ...]
    queries: Mapping[outcomes.Query, float]
    """Every query to resolve, with the smallest maxStale of the policies asking for it."""
    repositories_for_mutability: frozenset[outcomes.Repository]
    original_images: Mapping[str, str]
    """The `original-images` annotation already on the object."""
    revision: revisions.Revision | None = None
    """Mutating a pod a controller creates: its revision, whose pods share digests."""
    recheck: frozenset[outcomes.Query] = frozenset()
    """Queries not to answer from an older cache entry: the first pod of a revision is
    pinned to what the registry says now, so replicas agree on it."""

    @functools.cached_property
    def rollout_images(self) -> frozenset[str]:
        """The original references pinned per revision (see `follow_revision`)."""
        if self.revision is None:
            return frozenset()
        return frozenset(s.container.image for s in self.subjects if s.pinned_per_revision)


@dataclasses.dataclass(frozen=True)
class Finding:
    """Something wrong with one image under one policy."""

    reason: str
    subject: Subject
    policy: policies.Policy
    detail: str
    denies: bool

    @property
    def message(self) -> str:
        ref = self.subject.reference
        where = ""
        if ref is not None:
            ecr = ref.ecr
            where = f" (repository {ref.repository} in registry {ref.registry}"
            if ecr is not None:
                where += f", account {ecr.account}, region {ecr.region}"
            where += ")"
        return (
            f"{self.subject.container.label}: image {self.subject.container.shown_image}{where}:"
            f" {self.detail} [{self.reason}; DigestPolicy {self.policy.name},"
            f" action {self.policy.action.value}]"
        )


@dataclasses.dataclass(frozen=True)
class Edit:
    """Replace the string at JSON pointer `pointer` with `value`."""

    pointer: str
    value: str


@dataclasses.dataclass(frozen=True)
class Repin:
    """A revision's digest that is gone from the registry: its next pod was pinned afresh."""

    container: str
    image: str
    gone: references.Digest
    why: str
    digest: references.Digest | None
    """The digest pinned instead, if the tag resolved."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    allowed: bool
    denials: tuple[str, ...]
    warnings: tuple[str, ...]
    edits: tuple[Edit, ...]
    annotations: Mapping[str, str]
    findings: tuple[Finding, ...]
    revision_digests: Mapping[str, references.Digest] = dataclasses.field(default_factory=dict)
    """Original reference -> digest pinned, for the images pinned per revision."""
    repins: tuple[Repin, ...] = ()

    @property
    def message(self) -> str:
        return "; ".join(self.denials)


def plan(
    review: Review,
    all_policies: Iterable[policies.Policy],
    namespace_labels: Mapping[str, str],
    phase: Phase,
    *,
    plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP,
) -> Plan:
    """Which images to examine, which policies apply to each, and what to ask the registry.

    `plain_http` is the configured plain-HTTP registries: their `:80` is the default port.
    """
    pod_labels = containers.pod_labels(review.obj)
    previous = _previous_images(review)
    subjects: list[Subject] = []
    queries: dict[outcomes.Query, float] = {}
    mutability: set[outcomes.Repository] = set()
    # Selectors depend on the pod, not the image: matched once for all its containers.
    selected = policies.selecting(all_policies, namespace_labels, pod_labels)
    for container in containers.walk(review.obj):
        # On UPDATE only what changed: an image already running is not re-judged.
        if previous.get((container.list_name, container.container)) == container.image:
            continue
        try:
            reference: references.ImageReference | None = references.parse(
                container.image, plain_http=plain_http
            )
            problem = None
        except errors.InvalidReference as error:
            reference, problem = None, error.problem
        applicable = policies.covering(selected, reference.name if reference is not None else None)
        in_phase = tuple(p for p in applicable if _acts_in(p, phase, review.kind))
        if phase is Phase.VALIDATING and review.kind == "Pod" and _tag_only(reference):
            # The mutating webhook runs first: a tag-only image under a Mutate policy here
            # means it did not run (a misrouted or missing configuration), and the pod
            # would start unpinned. Pinned images are not looked up a second time.
            in_phase += tuple(p for p in applicable if p.action is policies.Action.MUTATE)
        if not in_phase:
            continue
        subject = Subject(
            container=container,
            reference=reference,
            problem=problem,
            policies=in_phase,
            max_stale_seconds=_max_stale(applicable),
        )
        subjects.append(subject)
        for query in (subject.lookup, subject.tag_check):
            if query is not None:
                queries[query] = min(
                    queries.get(query, subject.max_stale_seconds), subject.max_stale_seconds
                )
        # Only ECR has immutable tags: other registries are not asked about them.
        if (
            subject.is_tag_only
            and subject.lookup is not None
            and subject.reference is not None
            and subject.reference.ecr is not None
            and any(
                p.action is not policies.Action.MUTATE and p.allow_immutable_tags for p in in_phase
            )
        ):
            mutability.add(subject.lookup.repository)
    revision = None
    if phase is Phase.MUTATING and review.kind == "Pod" and review.operation == "CREATE":
        revision = revisions.of(review.obj, review.namespace)
    return Plan(
        phase=phase,
        kind=review.kind,
        subjects=tuple(subjects),
        queries=queries,
        repositories_for_mutability=frozenset(mutability),
        original_images=containers.original_images(review.obj),
        revision=revision,
    )


def follow_revision(the_plan: Plan, in_use: Mapping[str, references.Digest]) -> Plan:
    """The plan for a pod of a revision whose pods run `in_use` (original reference ->
    digest): each of those images is checked by that digest and pinned to it again;
    the revision's other images are its first, asked of the registry afresh."""
    subjects: list[Subject] = []
    queries = dict(the_plan.queries)
    recheck: set[outcomes.Query] = set()
    for subject in the_plan.subjects:
        if not subject.pinned_per_revision:
            subjects.append(subject)
            continue
        digest = in_use.get(subject.container.image)
        if digest is None:
            if subject.lookup is not None:
                recheck.add(subject.lookup)
            subjects.append(subject)
            continue
        lookup = subject.lookup
        if lookup is None:
            subjects.append(subject)
            continue
        check = outcomes.Query(lookup.repository, digest=digest)
        queries[check] = min(
            queries.get(check, subject.max_stale_seconds), subject.max_stale_seconds
        )
        following = Subject(
            subject.container,
            subject.reference,
            subject.problem,
            subject.policies,
            subject.max_stale_seconds,
            revision_lookup=check,
        )
        subjects.append(following)
    return Plan(
        phase=the_plan.phase,
        kind=the_plan.kind,
        subjects=tuple(subjects),
        queries=queries,
        repositories_for_mutability=the_plan.repositories_for_mutability,
        original_images=the_plan.original_images,
        revision=the_plan.revision,
        recheck=frozenset(recheck),
    )


def decide(
    the_plan: Plan,
    results: Mapping[outcomes.Query, outcomes.Outcome],
    mutabilities: Mapping[outcomes.Repository, outcomes.MutabilityOutcome],
) -> Verdict:
    """Turn the registry's answers into a verdict; nothing here does I/O."""
    findings: list[Finding] = []
    warnings: list[str] = []
    edits: list[Edit] = []
    originals = dict(the_plan.original_images)
    revision_digests: dict[str, references.Digest] = {}
    repins: list[Repin] = []
    for subject in the_plan.subjects:
        kept, repin = _follow(subject, the_plan, results)
        subject_findings: list[Finding]
        digest: references.Digest | None
        if kept is not None:
            subject_findings, digest, notes = [], kept[0], kept[1]
        else:
            subject_findings, digest, notes = _judge(subject, the_plan, results, mutabilities)
        if repin is not None:
            repins.append(dataclasses.replace(repin, digest=digest))
            notes.insert(0, _repin_note(subject, repin, digest, the_plan.revision))
        findings.extend(subject_findings)
        warnings.extend(notes)
        ref = subject.reference
        rewrite = (
            the_plan.phase is Phase.MUTATING
            and digest is not None
            and ref is not None
            and ref.digest is None
            and not any(f.denies for f in subject_findings)
        )
        if rewrite and ref is not None and digest is not None:
            keep_tag = all(
                p.keep_tag for p in subject.policies if p.action is policies.Action.MUTATE
            )
            edits.append(Edit(subject.container.pointer, ref.pinned(digest, keep_tag=keep_tag)))
            originals[containers.original_key(subject.container)] = subject.container.image
            if the_plan.revision is not None and subject.pinned_per_revision:
                revision_digests.setdefault(subject.container.image, digest)
    denials = tuple(dict.fromkeys(f.message for f in findings if f.denies))
    warnings.extend(f.message for f in findings if not f.denies)
    annotations: dict[str, str] = {}
    if edits:
        annotations[names.ANNOTATION_ORIGINAL_IMAGES] = json.dumps(
            originals, sort_keys=True, separators=(",", ":")
        )
    return Verdict(
        allowed=not denials,
        denials=denials,
        warnings=tuple(dict.fromkeys(warnings)),
        edits=tuple(edits) if not denials else (),
        annotations=annotations if not denials else {},
        findings=tuple(findings),
        revision_digests=revision_digests if not denials else {},
        repins=tuple(repins),
    )


def _follow(
    subject: Subject, the_plan: Plan, results: Mapping[outcomes.Query, outcomes.Outcome]
) -> tuple[tuple[references.Digest, list[str]] | None, Repin | None]:
    """(the revision's digest and notes, when the pod keeps it; what is gone, when not).

    The revision's digest is kept while the registry has it, and while the registry
    cannot tell but the tag resolves; gone (deleted, archived, or failing verification),
    the pod is judged by its tag like the first pod of a revision."""
    check = subject.revision_lookup
    digest = check.digest if check is not None else None
    if check is None or digest is None:
        return None, None
    outcome = results.get(check)
    tag_outcome = results.get(subject.lookup) if subject.lookup is not None else None
    notes: list[str] = []
    where = f"{subject.container.label}: image {subject.container.shown_image}"
    if isinstance(outcome, outcomes.Missing | outcomes.Corrupt | outcomes.Archived):
        why = (
            f"{outcome.code}: {outcome.message}"
            if isinstance(outcome, outcomes.Missing)
            else outcome.message
        )
        return None, Repin(subject.container.label, subject.container.image, digest, why, None)
    if isinstance(outcome, outcomes.Found):
        if outcome.age_seconds > 0:
            notes.append(
                f"{where}: the registry could not be reached; pinned to {digest}, which the"
                f" pods of {the_plan.revision} run, confirmed {outcome.age_seconds:.0f}s ago"
                f" [{names.REASON_STALE_DIGEST}]"
            )
    elif not isinstance(tag_outcome, outcomes.Found):
        return None, None
    if isinstance(tag_outcome, outcomes.Found) and tag_outcome.digest != digest:
        notes.append(
            f"{where}: tag now points to {tag_outcome.digest}; pinned to {digest}, which the"
            f" pods of {the_plan.revision} run (a new rollout moves to the new digest)"
            f" [{names.REASON_REVISION_KEPT}]"
        )
    return (digest, notes), None


def _repin_note(
    subject: Subject,
    repin: Repin,
    digest: references.Digest | None,
    revision: revisions.Revision | None,
) -> str:
    now = f"pinned to {digest}, the tag's digest now" if digest is not None else "judged by its tag"
    return (
        f"{subject.container.label}: image {subject.container.shown_image}: the digest"
        f" {repin.gone} that the pods of {revision} run can no longer be pulled"
        f" ({repin.why}); this pod is {now} [{names.REASON_REVISION_DIGEST_GONE}]"
    )


def json_patch(obj: Mapping[str, Any], verdict: Verdict) -> list[dict[str, Any]]:
    """The RFC 6902 JSON patch that applies the verdict's edits and annotations to `obj`.

    This is the only encoder of a mutation: the admission response carries exactly this.
    """
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": edit.pointer, "value": edit.value} for edit in verdict.edits
    ]
    if verdict.annotations:
        added = dict(verdict.annotations)
        metadata = obj.get("metadata")
        annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
        if not isinstance(metadata, Mapping):
            ops.append({"op": "add", "path": "/metadata", "value": {"annotations": added}})
        elif not isinstance(annotations, Mapping):
            ops.append({"op": "add", "path": "/metadata/annotations", "value": added})
        else:
            # `add` of a member that exists replaces it (RFC 6902, 4.1).
            ops.extend(
                {
                    "op": "add",
                    "path": f"/metadata/annotations/{_pointer_token(key)}",
                    "value": value,
                }
                for key, value in added.items()
            )
    return ops


def _pointer_token(key: str) -> str:
    """A JSON pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _max_stale(applicable: tuple[policies.Policy, ...]) -> float:
    """The smallest maxStale, of the policies that can deny if any: an Audit policy's
    stricter maxStale must not turn a registry blip into a denial."""
    deciding = [p for p in applicable if p.can_deny] or list(applicable)
    return min(p.max_stale_seconds for p in deciding)


def _tag_only(reference: references.ImageReference | None) -> bool:
    return reference is not None and reference.digest is None


def _acts_in(policy: policies.Policy, phase: Phase, kind: str) -> bool:
    if kind != "Pod":
        # Workload templates are only validated; Mutate checks existence there.
        return phase is Phase.VALIDATING
    if phase is Phase.MUTATING:
        return policy.action is policies.Action.MUTATE
    return policy.action is not policies.Action.MUTATE


def _judge(
    subject: Subject,
    the_plan: Plan,
    results: Mapping[outcomes.Query, outcomes.Outcome],
    mutabilities: Mapping[outcomes.Repository, outcomes.MutabilityOutcome],
) -> tuple[list[Finding], references.Digest | None, list[str]]:
    """Findings for one image under each of its policies, its digest if known, and notes."""
    notes: list[str] = []
    deny_on_error = any(
        p.can_deny and p.on_resolve_error is policies.OnResolveError.DENY for p in subject.policies
    )
    problem = _problem(subject, results)
    digest: references.Digest | None = None
    lookup = subject.lookup
    outcome = results.get(lookup) if lookup is not None else None
    if isinstance(outcome, outcomes.Found):
        digest = outcome.digest
        if outcome.age_seconds > 0:
            notes.append(
                f"{subject.container.label}: image {subject.container.shown_image}: the registry"
                f" could not be reached; using the digest {outcome.digest} resolved"
                f" {outcome.age_seconds:.0f}s ago [{names.REASON_STALE_DIGEST}]"
            )
    moved = _tag_moved(subject, results)
    if moved is not None:
        notes.append(moved)

    findings: list[Finding] = []
    not_imported = outcome if isinstance(outcome, outcomes.NotImported) else None
    for policy in subject.policies:
        if problem is not None:
            reason, detail, fatal = problem
            denies = policy.can_deny and (fatal or deny_on_error)
            findings.append(Finding(reason, subject, policy, detail, denies))
            if fatal:
                continue
        if not_imported is not None and subject.is_tag_only:
            handled, note = _first_pull(subject, policy, the_plan, not_imported)
            if note is not None:
                findings.append(note)
            if handled:
                continue
        # A tag-only reference breaks Enforce whether or not the registry answered.
        unpinned = _unpinned_violation(subject, policy, the_plan, results, mutabilities)
        if unpinned is not None:
            detail, decided = unpinned
            denies = policy.can_deny and (decided or deny_on_error)
            findings.append(Finding(names.REASON_TAG_NOT_PINNED, subject, policy, detail, denies))
    return findings, digest, notes


def _problem(
    subject: Subject, results: Mapping[outcomes.Query, outcomes.Outcome]
) -> tuple[str, str, bool] | None:
    """(reason, detail, fatal) when the image cannot be confirmed to exist; fatal ones
    deny under Mutate/Enforce whatever onResolveError says."""
    if subject.reference is None or subject.lookup is None:
        return names.REASON_INVALID_REFERENCE, f"not a valid reference: {subject.problem}", True
    outcome = results.get(subject.lookup)
    if isinstance(outcome, outcomes.Found):
        return None
    if isinstance(outcome, outcomes.Missing):
        what = "digest" if subject.lookup.digest else f"tag {subject.lookup.tag!r}"
        return (
            names.REASON_IMAGE_MISSING,
            f"{what} not found ({outcome.code}: {outcome.message})",
            True,
        )
    if isinstance(outcome, outcomes.NotImported):
        if subject.lookup.digest is None:
            return None  # the tag exists upstream: see _first_pull
        return (
            names.REASON_NOT_IMPORTED,
            f"{outcome.message}; a first pull through the cache by digest fails: reference"
            " it by tag until ECR has imported it",
            True,
        )
    if isinstance(outcome, outcomes.Archived):
        # It exists, but no node can pull it: an answer, so onResolveError does not apply.
        return names.REASON_IMAGE_ARCHIVED, outcome.message, True
    if isinstance(outcome, outcomes.Corrupt):
        return names.REASON_INTEGRITY, outcome.message, True
    message = outcome.message if outcome is not None else "no answer"
    return names.REASON_REGISTRY_UNAVAILABLE, f"could not resolve the image: {message}", False


def _first_pull(
    subject: Subject,
    policy: policies.Policy,
    the_plan: Plan,
    outcome: outcomes.NotImported,
) -> tuple[bool, Finding | None]:
    """(handled, finding) for a tag that ECR's pull-through cache has not imported yet but
    its upstream has: it is admitted by tag (a digest cannot be pulled before ECR imports
    it on the first pull by tag), except under Enforce without allowPullThroughFirstPull,
    where it is a tag-only reference like any other (not handled here)."""
    detail = f"{outcome.message}; admitted by tag, not pinned: ECR imports it on the first pull"
    if policy.action is policies.Action.MUTATE:
        if the_plan.phase is Phase.MUTATING:
            return True, Finding(names.REASON_NOT_IMPORTED, subject, policy, detail, False)
        # The mutating webhook admitted it on purpose, and warned.
        return True, None
    if policy.action is policies.Action.ENFORCE and policy.allow_pull_through_first_pull:
        return True, Finding(
            names.REASON_NOT_IMPORTED,
            subject,
            policy,
            f"{detail} (allowPullThroughFirstPull)",
            False,
        )
    return False, None


def _unpinned_violation(
    subject: Subject,
    policy: policies.Policy,
    the_plan: Plan,
    results: Mapping[outcomes.Query, outcomes.Outcome],
    mutabilities: Mapping[outcomes.Repository, outcomes.MutabilityOutcome],
) -> tuple[str, bool] | None:
    """(detail, decided) when a tag-only reference breaks `policy`; not decided when the
    registry or the tag mutability could not be read, so that onResolveError decides."""
    if not subject.is_tag_only or the_plan.phase is Phase.MUTATING:
        return None
    if policy.action is policies.Action.MUTATE:
        if the_plan.kind != "Pod":
            return None
        # Found means the mutating webhook would have pinned it (a stale digest too);
        # otherwise it may have let it through under onResolveError: Allow.
        found = subject.lookup is not None and isinstance(
            results.get(subject.lookup), outcomes.Found
        )
        return (
            "still referenced by tag only after the mutating webhook, which pins it"
            f" under this Mutate policy: check that the MutatingWebhookConfiguration sends"
            f" pods to /{names.MUTATE_PODS} (and ephemeral containers to"
            f" /{names.MUTATE_EPHEMERAL})",
            found,
        )
    if policy.allow_immutable_tags and subject.lookup is not None:
        tag = subject.lookup.tag or outcomes.IMPLICIT_TAG
        if subject.reference is None or subject.reference.ecr is None:
            return (
                f"referenced by the tag {tag!r}, and only Amazon ECR makes tags immutable"
                " (allowImmutableTags); pin it by digest (repo@sha256:...)",
                True,
            )
        setting = mutabilities.get(subject.lookup.repository)
        if isinstance(setting, outcomes.TagMutability):
            if setting.is_immutable(tag):
                return None
            return (
                f"referenced by the mutable tag {tag!r}; pin it by digest (repo@sha256:...)",
                True,
            )
        message = setting.message if setting is not None else "no answer"
        return (
            "referenced by tag only, and the repository's tag mutability could not be"
            f" read ({message}); pin it by digest",
            False,
        )
    if subject.lookup is not None and isinstance(results.get(subject.lookup), outcomes.NotImported):
        return (
            "referenced by tag only, and ECR's pull-through cache has not imported it yet, so"
            " no digest can be pulled before a first pull by tag (allowPullThroughFirstPull:"
            " true admits such a tag)",
            True,
        )
    return "referenced by tag only; pin it by digest (repo@sha256:...)", True


def _tag_moved(subject: Subject, results: Mapping[outcomes.Query, outcomes.Outcome]) -> str | None:
    check = subject.tag_check
    if check is None or subject.reference is None:
        return None
    outcome = results.get(check)
    if isinstance(outcome, outcomes.Found) and outcome.digest != subject.reference.digest:
        return (
            f"{subject.container.label}: image {subject.container.shown_image}: tag {check.tag!r}"
            f" now points to {outcome.digest}; the pod keeps the pinned digest"
            f" [{names.REASON_TAG_MOVED}]"
        )
    return None


def _previous_images(review: Review) -> dict[tuple[str, str], str]:
    if review.operation != "UPDATE" or review.old is None:
        return {}
    return {(c.list_name, c.container): c.image for c in containers.walk(review.old)}
