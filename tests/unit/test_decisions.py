"""The decision core: from a review, policies and hand-made registry answers to a verdict.

No resolver and no I/O: each test states what the registry said, as
`resolutions` results, and checks the plan and the verdict.
"""

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import names
from webhook.core import decisions, outcomes, policies, references

ECR = "111122223333.dkr.ecr.eu-west-1.amazonaws.com"
ECR_GLOB = "*.dkr.ecr.*.amazonaws.com/**"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REPO = outcomes.Repository(ECR, "shop/api")
WEB_REPO = outcomes.Repository(ECR, "shop/web")
IMAGE = f"{ECR}/shop/api:v1"
WEB_IMAGE = f"{ECR}/shop/web:v2"
DIGEST = references.Digest("sha256:" + hashlib.sha256(b"api v1").hexdigest())
WEB_DIGEST = references.Digest("sha256:" + hashlib.sha256(b"web v2").hexdigest())
MOVED = references.Digest("sha256:" + hashlib.sha256(b"api v1, rebuilt").hexdigest())
PINNED = f"{ECR}/shop/api:v1@{DIGEST}"
BY_TAG = outcomes.Query(REPO, tag="v1")
BY_DIGEST = outcomes.Query(REPO, digest=DIGEST)
WEB_BY_TAG = outcomes.Query(WEB_REPO, tag="v2")
NGINX_REPO = outcomes.Repository("docker.io", "library/nginx")
NGINX_BY_TAG = outcomes.Query(NGINX_REPO, tag="1.25")
FOUND = outcomes.Found(DIGEST, OCI_INDEX)
WEB_FOUND = outcomes.Found(WEB_DIGEST, OCI_INDEX)
MISSING = outcomes.Missing("ImageNotFound", "Requested image not found")
UNKNOWN = outcomes.Unknown("ThrottlingException: Rate exceeded")
CORRUPT = outcomes.Corrupt("sha256 of the manifest is not the digest ECR reported")
NOT_IMPORTED = outcomes.NotImported(
    "shop/api is under the pull-through cache rule shop/ -> registry.example.com; ECR does"
    " not hold it and this lookup could not import it"
)
ARCHIVED = outcomes.Archived(
    "ARCHIVED",
    f"{BY_TAG} is archived in ECR (storage class ARCHIVE) and cannot be pulled until it is"
    " restored: aws ecr update-image-storage-class ... --target-storage-class STANDARD",
)

MUTATING = decisions.Phase.MUTATING
VALIDATING = decisions.Phase.VALIDATING
Outcomes = Mapping[outcomes.Query, outcomes.Outcome]
Mutabilities = Mapping[outcomes.Repository, outcomes.MutabilityOutcome]


def policy(name: str = "pin", **spec: Any) -> policies.Policy:
    return policies.parse(name, 1, {"images": [ECR_GLOB], **spec})


def container(name: str, image: str) -> dict[str, Any]:
    return {"name": name, "image": image}


def pod(
    *images: str,
    init: tuple[str, ...] = (),
    ephemeral: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container(f"c{i}", im) for i, im in enumerate(images)]}
    if init:
        spec["initContainers"] = [container(f"i{i}", im) for i, im in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [container(f"e{i}", im) for i, im in enumerate(ephemeral)]
    metadata: dict[str, Any] = {"name": "p", "namespace": "shop"}
    if labels is not None:
        metadata["labels"] = labels
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def api_pod(image: str = IMAGE, **kwargs: Any) -> dict[str, Any]:
    obj = pod(**kwargs)
    obj["spec"]["containers"] = [container("api", image)]
    return obj


def deployment(image: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    template: dict[str, Any] = {"spec": {"containers": [container("api", image)]}}
    if labels is not None:
        template["metadata"] = {"labels": labels}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"replicas": 2, "template": template},
    }


def cronjob(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "shop"},
        "spec": {
            "schedule": "@daily",
            "jobTemplate": {
                "spec": {"template": {"spec": {"containers": [container("job", image)]}}}
            },
        },
    }


def make_plan(
    obj: Mapping[str, Any],
    rules: list[policies.Policy],
    phase: decisions.Phase = MUTATING,
    *,
    operation: str = "CREATE",
    old: Mapping[str, Any] | None = None,
    namespace_labels: Mapping[str, str] | None = None,
) -> decisions.Plan:
    review = decisions.Review(operation=operation, namespace="shop", obj=obj, old=old)
    return decisions.plan(review, rules, namespace_labels or {}, phase)


def applied(obj: Mapping[str, Any], verdict: decisions.Verdict) -> dict[str, Any]:
    """`obj` as the apiserver makes it from the verdict's patch (a copy; `obj` is kept)."""
    patched: dict[str, Any] = jsonpatch.apply_patch(obj, decisions.json_patch(obj, verdict))
    return patched


def judge(
    obj: Mapping[str, Any],
    rules: list[policies.Policy],
    results: Outcomes,
    phase: decisions.Phase = MUTATING,
    *,
    mutabilities: Mutabilities | None = None,
    operation: str = "CREATE",
    old: Mapping[str, Any] | None = None,
    namespace_labels: Mapping[str, str] | None = None,
) -> decisions.Verdict:
    the_plan = make_plan(
        obj, rules, phase, operation=operation, old=old, namespace_labels=namespace_labels
    )
    return decisions.decide(the_plan, results, mutabilities or {})


def original_images(verdict: decisions.Verdict) -> Any:
    return json.loads(verdict.annotations[names.ANNOTATION_ORIGINAL_IMAGES])


def has_reason(messages: tuple[str, ...], reason: str) -> bool:
    return any(f"[{reason}" in message for message in messages)


# Mutate


def test_mutate_rewrites_a_tag_only_reference_to_tag_and_digest() -> None:
    verdict = judge(api_pod(), [policy()], {BY_TAG: FOUND})
    assert verdict.allowed
    assert verdict.edits == (decisions.Edit("/spec/containers/0/image", PINNED),)


def test_mutate_without_keep_tag_rewrites_to_digest_only() -> None:
    verdict = judge(api_pod(), [policy(keepTag=False)], {BY_TAG: FOUND})
    assert verdict.edits == (
        decisions.Edit("/spec/containers/0/image", f"{ECR}/shop/api@{DIGEST}"),
    )


def test_mutate_resolves_a_reference_without_tag_as_latest() -> None:
    the_plan = make_plan(api_pod(f"{ECR}/shop/api"), [policy()])
    assert set(the_plan.queries) == {outcomes.Query(REPO, tag="latest")}


def test_mutate_pins_a_reference_without_tag_to_digest_only() -> None:
    latest = outcomes.Query(REPO, tag="latest")
    verdict = judge(api_pod(f"{ECR}/shop/api"), [policy()], {latest: FOUND})
    assert verdict.edits == (
        decisions.Edit("/spec/containers/0/image", f"{ECR}/shop/api@{DIGEST}"),
    )


def test_mutate_records_the_original_images_as_json_keyed_by_list_and_container() -> None:
    verdict = judge(api_pod(), [policy()], {BY_TAG: FOUND})
    assert original_images(verdict) == {"containers/api": IMAGE}


def test_mutate_keeps_original_images_already_recorded() -> None:
    recorded = json.dumps({"initContainers/setup": f"{ECR}/shop/setup:v0"})
    obj = api_pod(annotations={names.ANNOTATION_ORIGINAL_IMAGES: recorded})
    verdict = judge(obj, [policy()], {BY_TAG: FOUND})
    assert original_images(verdict) == {
        "initContainers/setup": f"{ECR}/shop/setup:v0",
        "containers/api": IMAGE,
    }


def test_malformed_original_images_annotation_is_started_afresh() -> None:
    obj = api_pod(annotations={names.ANNOTATION_ORIGINAL_IMAGES: "{not json"})
    verdict = judge(obj, [policy()], {BY_TAG: FOUND})
    assert original_images(verdict) == {"containers/api": IMAGE}


def test_plan_reads_the_original_images_already_on_the_object() -> None:
    recorded = json.dumps({"containers/api": IMAGE, "containers/odd": 3})
    the_plan = make_plan(api_pod(annotations={names.ANNOTATION_ORIGINAL_IMAGES: recorded}), [])
    assert the_plan.original_images == {"containers/api": IMAGE}


def test_mutate_rewrites_every_container_list() -> None:
    obj = pod(WEB_IMAGE, init=(IMAGE,), ephemeral=(WEB_IMAGE,))
    verdict = judge(obj, [policy()], {BY_TAG: FOUND, WEB_BY_TAG: WEB_FOUND})
    assert verdict.edits == (
        decisions.Edit("/spec/initContainers/0/image", PINNED),
        decisions.Edit("/spec/containers/0/image", f"{WEB_IMAGE}@{WEB_DIGEST}"),
        decisions.Edit("/spec/ephemeralContainers/0/image", f"{WEB_IMAGE}@{WEB_DIGEST}"),
    )
    assert original_images(verdict) == {
        "initContainers/i0": IMAGE,
        "containers/c0": WEB_IMAGE,
        "ephemeralContainers/e0": WEB_IMAGE,
    }


def test_two_containers_with_one_image_share_one_query() -> None:
    the_plan = make_plan(pod(IMAGE, IMAGE), [policy()])
    assert list(the_plan.queries) == [BY_TAG]
    assert len(the_plan.subjects) == 2


def test_mutate_is_idempotent_when_reinvoked() -> None:
    first = judge(api_pod(), [policy()], {BY_TAG: FOUND})
    mutated = copy.deepcopy(api_pod())
    mutated = applied(mutated, first)
    again = judge(mutated, [policy()], {BY_DIGEST: FOUND, BY_TAG: FOUND})
    assert (again.allowed, again.edits, again.annotations, again.warnings) == (True, (), {}, ())


def test_reinvocation_leaves_the_object_as_the_first_invocation_made_it() -> None:
    first = judge(api_pod(), [policy()], {BY_TAG: FOUND})
    mutated = copy.deepcopy(api_pod())
    mutated = applied(mutated, first)
    before = copy.deepcopy(mutated)
    mutated = applied(mutated, judge(mutated, [policy()], {BY_DIGEST: FOUND, BY_TAG: FOUND}))
    assert mutated == before


def test_mutate_denies_a_missing_image_naming_container_image_repository_registry_and_policy() -> (
    None
):
    verdict = judge(api_pod(), [policy("ecr-production")], {BY_TAG: MISSING})
    assert not verdict.allowed
    assert verdict.message == (
        f"containers[api]: image '{IMAGE}' (repository shop/api in registry {ECR},"
        " account 111122223333, region eu-west-1): tag 'v1' not found"
        " (ImageNotFound: Requested image not found)"
        " [ImageMissing; DigestPolicy ecr-production, action Mutate]"
    )


def test_denied_pod_gets_no_edits_and_no_annotation() -> None:
    verdict = judge(pod(IMAGE, WEB_IMAGE), [policy()], {BY_TAG: MISSING, WEB_BY_TAG: WEB_FOUND})
    assert (verdict.allowed, verdict.edits, verdict.annotations) == (False, (), {})


def test_mutate_denies_a_missing_digest() -> None:
    verdict = judge(api_pod(f"{ECR}/shop/api@{DIGEST}"), [policy()], {BY_DIGEST: MISSING})
    assert not verdict.allowed
    assert "digest not found" in verdict.message


def test_digest_pinned_reference_is_looked_up_by_digest() -> None:
    the_plan = make_plan(api_pod(f"{ECR}/shop/api@{DIGEST}"), [policy()])
    assert set(the_plan.queries) == {BY_DIGEST}


def test_digest_pinned_reference_that_exists_is_left_alone() -> None:
    verdict = judge(api_pod(f"{ECR}/shop/api@{DIGEST}"), [policy()], {BY_DIGEST: FOUND})
    assert (verdict.allowed, verdict.edits, verdict.warnings) == (True, (), ())


def test_tag_and_digest_reference_is_looked_up_by_digest_and_by_tag() -> None:
    the_plan = make_plan(api_pod(PINNED), [policy()])
    assert set(the_plan.queries) == {BY_DIGEST, BY_TAG}


def test_tag_and_digest_whose_tag_moved_is_only_a_warning() -> None:
    moved = outcomes.Found(MOVED, OCI_INDEX)
    verdict = judge(api_pod(PINNED), [policy()], {BY_DIGEST: FOUND, BY_TAG: moved})
    assert (verdict.allowed, verdict.edits) == (True, ())
    assert verdict.warnings == (
        f"containers[api]: image '{PINNED}': tag 'v1' now points to {MOVED};"
        f" the pod keeps the pinned digest [{names.REASON_TAG_MOVED}]",
    )


def test_tag_and_digest_whose_tag_still_points_there_gives_no_warning() -> None:
    verdict = judge(api_pod(PINNED), [policy()], {BY_DIGEST: FOUND, BY_TAG: FOUND})
    assert verdict.warnings == ()


def test_tag_and_digest_whose_tag_is_gone_is_not_denied() -> None:
    verdict = judge(api_pod(PINNED), [policy()], {BY_DIGEST: FOUND, BY_TAG: MISSING})
    assert verdict.allowed


def test_stale_digest_is_used_with_a_warning() -> None:
    stale = outcomes.Found(DIGEST, OCI_INDEX, age_seconds=240.0)
    verdict = judge(api_pod(), [policy()], {BY_TAG: stale})
    assert verdict.edits == (decisions.Edit("/spec/containers/0/image", PINNED),)
    assert has_reason(verdict.warnings, names.REASON_STALE_DIGEST)
    assert "resolved 240s ago" in verdict.warnings[0]


def test_registry_error_denies_under_on_resolve_error_deny() -> None:
    verdict = judge(api_pod(), [policy()], {BY_TAG: UNKNOWN})
    assert not verdict.allowed
    assert "could not resolve the image: ThrottlingException: Rate exceeded" in verdict.message
    assert f"[{names.REASON_REGISTRY_UNAVAILABLE};" in verdict.message


def test_registry_error_admits_unchanged_with_a_warning_under_on_resolve_error_allow() -> None:
    verdict = judge(api_pod(), [policy(onResolveError="Allow")], {BY_TAG: UNKNOWN})
    assert (verdict.allowed, verdict.edits, verdict.annotations) == (True, (), {})
    assert has_reason(verdict.warnings, names.REASON_REGISTRY_UNAVAILABLE)


def test_no_answer_for_a_query_counts_as_a_registry_error() -> None:
    verdict = judge(api_pod(), [policy()], {})
    assert not verdict.allowed
    assert "could not resolve the image: no answer" in verdict.message


def test_corrupt_answer_is_denied_even_under_on_resolve_error_allow() -> None:
    verdict = judge(api_pod(), [policy(onResolveError="Allow")], {BY_TAG: CORRUPT})
    assert not verdict.allowed
    assert f"[{names.REASON_INTEGRITY};" in verdict.message
    assert CORRUPT.message in verdict.message


def test_mutate_denies_an_archived_image_as_archived_even_under_on_resolve_error_allow() -> None:
    verdict = judge(api_pod(), [policy(onResolveError="Allow")], {BY_TAG: ARCHIVED})
    assert (verdict.allowed, verdict.edits) == (False, ())
    assert f"[{names.REASON_IMAGE_ARCHIVED};" in verdict.message
    assert "--target-storage-class STANDARD" in verdict.message


def test_enforce_denies_an_archived_digest_as_archived() -> None:
    rules = [policy(action="Enforce", onResolveError="Allow")]
    verdict = judge(api_pod(PINNED), rules, {BY_DIGEST: ARCHIVED, BY_TAG: FOUND}, VALIDATING)
    assert not verdict.allowed
    assert f"[{names.REASON_IMAGE_ARCHIVED};" in verdict.message


def test_audit_warns_about_an_archived_image() -> None:
    verdict = judge(api_pod(), [policy(action="Audit")], {BY_TAG: ARCHIVED}, VALIDATING)
    assert verdict.allowed
    assert has_reason(verdict.warnings, names.REASON_IMAGE_ARCHIVED)


def test_mutate_admits_a_tag_not_imported_through_the_cache_unchanged_with_a_warning() -> None:
    verdict = judge(api_pod(), [policy()], {BY_TAG: NOT_IMPORTED})
    assert (verdict.allowed, verdict.edits, verdict.annotations) == (True, (), {})
    assert has_reason(verdict.warnings, names.REASON_NOT_IMPORTED)
    assert any("admitted by tag, not pinned" in warning for warning in verdict.warnings)


def test_the_validating_webhook_admits_a_tag_a_mutate_policy_left_unpinned_on_purpose() -> None:
    verdict = judge(api_pod(), [policy()], {BY_TAG: NOT_IMPORTED}, VALIDATING)
    assert verdict.allowed
    assert not has_reason(verdict.warnings, names.REASON_TAG_NOT_PINNED)


def test_enforce_denies_a_tag_not_imported_through_the_cache_as_tag_only() -> None:
    verdict = judge(api_pod(), [policy(action="Enforce")], {BY_TAG: NOT_IMPORTED}, VALIDATING)
    assert not verdict.allowed
    assert f"[{names.REASON_TAG_NOT_PINNED};" in verdict.message
    assert "allowPullThroughFirstPull" in verdict.message


def test_enforce_allowing_first_pulls_admits_a_tag_not_imported_with_a_warning() -> None:
    rules = [policy(action="Enforce", allowPullThroughFirstPull=True)]
    verdict = judge(api_pod(), rules, {BY_TAG: NOT_IMPORTED}, VALIDATING)
    assert verdict.allowed
    assert has_reason(verdict.warnings, names.REASON_NOT_IMPORTED)


def test_allowing_first_pulls_does_not_admit_a_tag_that_ecr_holds() -> None:
    rules = [policy(action="Enforce", allowPullThroughFirstPull=True)]
    verdict = judge(api_pod(), rules, {BY_TAG: FOUND}, VALIDATING)
    assert not verdict.allowed
    assert f"[{names.REASON_TAG_NOT_PINNED};" in verdict.message


def test_a_digest_not_imported_through_the_cache_is_denied_even_under_allow() -> None:
    rules = [policy(onResolveError="Allow")]
    verdict = judge(api_pod(f"{ECR}/shop/api@{DIGEST}"), rules, {BY_DIGEST: NOT_IMPORTED})
    assert not verdict.allowed
    assert f"[{names.REASON_NOT_IMPORTED};" in verdict.message
    assert "by digest fails" in verdict.message


def test_non_ecr_image_under_a_matching_policy_is_looked_up_in_its_registry() -> None:
    the_plan = make_plan(api_pod("nginx:1.25"), [policy(images=["**"])])
    assert dict(the_plan.queries) == {NGINX_BY_TAG: 600.0}


def test_non_ecr_image_is_pinned_like_an_ecr_one() -> None:
    verdict = judge(api_pod("nginx:1.25"), [policy(images=["**"])], {NGINX_BY_TAG: FOUND})
    assert verdict.allowed
    assert verdict.edits == (decisions.Edit("/spec/containers/0/image", f"nginx:1.25@{DIGEST}"),)


def test_missing_non_ecr_image_is_denied() -> None:
    verdict = judge(api_pod("nginx:1.25"), [policy(images=["**"])], {NGINX_BY_TAG: MISSING})
    assert not verdict.allowed
    assert "(repository library/nginx in registry docker.io):" in verdict.message
    assert f"[{names.REASON_IMAGE_MISSING};" in verdict.message


def test_unreachable_non_ecr_registry_is_a_warning_under_on_resolve_error_allow() -> None:
    rules = [policy(images=["**"], onResolveError="Allow")]
    verdict = judge(api_pod("nginx:1.25"), rules, {NGINX_BY_TAG: UNKNOWN})
    assert (verdict.allowed, verdict.edits) == (True, ())
    assert has_reason(verdict.warnings, names.REASON_REGISTRY_UNAVAILABLE)


def test_invalid_reference_under_mutate_is_denied_with_the_parsers_message() -> None:
    image = f"{ECR}/Shop/api:v1"
    verdict = judge(api_pod(image), [policy()], {})
    assert not verdict.allowed
    assert verdict.message == (
        f"containers[api]: image '{image}': not a valid reference: repository path component"
        " 'Shop' must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
        f" [{names.REASON_INVALID_REFERENCE}; DigestPolicy pin, action Mutate]"
    )


def test_invalid_reference_falls_under_policies_whatever_their_globs() -> None:
    verdict = judge(api_pod("app:"), [policy(images=["registry.example.com/**"])], {})
    assert not verdict.allowed


def test_invalid_reference_asks_the_registry_nothing() -> None:
    assert dict(make_plan(api_pod("app:"), [policy()]).queries) == {}


# Which policies act in which phase


def test_mutate_does_not_look_up_a_pinned_image_again_in_the_validating_phase() -> None:
    assert make_plan(pod(PINNED), [policy()], VALIDATING).subjects == ()


def test_a_tag_only_image_that_reaches_validation_under_mutate_is_denied() -> None:
    # The mutating webhook did not run (a configuration sending pods to /validate-pods,
    # or none): the pod must not start unpinned with no word said.
    verdict = judge(api_pod(), [policy()], {BY_TAG: FOUND}, VALIDATING)
    assert not verdict.allowed
    assert (verdict.edits, verdict.annotations) == ((), {})
    (finding,) = verdict.findings
    assert finding.reason == names.REASON_TAG_NOT_PINNED
    assert f"/{names.MUTATE_PODS}" in finding.message


@pytest.mark.parametrize(("on_error", "allowed"), [("Allow", True), ("Deny", False)])
def test_an_unresolvable_tag_only_image_in_validation_under_mutate_follows_on_resolve_error(
    on_error: str, allowed: bool
) -> None:
    # The mutating webhook lets such an image through unpinned under Allow, so must this.
    verdict = judge(api_pod(), [policy(onResolveError=on_error)], {BY_TAG: UNKNOWN}, VALIDATING)
    assert verdict.allowed is allowed


@pytest.mark.parametrize("action", ["Enforce", "Audit"])
def test_enforce_and_audit_do_not_act_in_the_mutating_phase_of_a_pod(action: str) -> None:
    assert make_plan(api_pod(), [policy(action=action)], MUTATING).subjects == ()


def test_no_matching_policy_means_no_subjects_and_no_queries() -> None:
    the_plan = make_plan(api_pod("nginx:1.25"), [policy()])
    assert (the_plan.subjects, dict(the_plan.queries)) == ((), {})


def test_no_policy_at_all_admits_untouched() -> None:
    verdict = judge(api_pod(), [], {})
    assert (verdict.allowed, verdict.edits, verdict.warnings, verdict.annotations) == (
        True,
        (),
        (),
        {},
    )


def test_excluded_image_is_not_examined() -> None:
    the_plan = make_plan(api_pod(), [policy(excludeImages=[f"{ECR}/shop/**"])])
    assert the_plan.subjects == ()


def test_policy_for_other_namespaces_is_not_applied() -> None:
    prod = policy(namespaceSelector={"matchLabels": {"env": "prod"}})
    assert make_plan(api_pod(), [prod], namespace_labels={"env": "dev"}).subjects == ()
    assert len(make_plan(api_pod(), [prod], namespace_labels={"env": "prod"}).subjects) == 1


def test_policy_for_other_pods_is_not_applied() -> None:
    web = policy(podSelector={"matchLabels": {"app": "web"}})
    assert make_plan(api_pod(labels={"app": "db"}), [web]).subjects == ()
    assert len(make_plan(api_pod(labels={"app": "web"}), [web]).subjects) == 1


# Enforce


def test_enforce_denies_a_tag_only_reference_in_the_validating_phase() -> None:
    verdict = judge(api_pod(), [policy(action="Enforce")], {BY_TAG: FOUND}, VALIDATING)
    assert not verdict.allowed
    assert verdict.message == (
        f"containers[api]: image '{IMAGE}' (repository shop/api in registry {ECR},"
        " account 111122223333, region eu-west-1): referenced by tag only; pin it by digest"
        f" (repo@sha256:...) [{names.REASON_TAG_NOT_PINNED}; DigestPolicy pin, action Enforce]"
    )


def test_enforce_never_rewrites() -> None:
    verdict = judge(api_pod(), [policy(action="Enforce")], {BY_TAG: FOUND}, VALIDATING)
    assert (verdict.edits, verdict.annotations) == ((), {})


def test_enforce_accepts_a_digest_pinned_reference_that_exists() -> None:
    verdict = judge(api_pod(PINNED), [policy(action="Enforce")], {BY_DIGEST: FOUND}, VALIDATING)
    assert verdict.allowed


def test_enforce_denies_a_missing_digest() -> None:
    verdict = judge(api_pod(PINNED), [policy(action="Enforce")], {BY_DIGEST: MISSING}, VALIDATING)
    assert not verdict.allowed
    assert f"[{names.REASON_IMAGE_MISSING};" in verdict.message


def test_enforce_without_allow_immutable_tags_asks_for_no_mutability() -> None:
    the_plan = make_plan(api_pod(), [policy(action="Enforce")], VALIDATING)
    assert the_plan.repositories_for_mutability == frozenset()


def test_enforce_with_allow_immutable_tags_asks_for_the_repository_mutability() -> None:
    the_plan = make_plan(api_pod(), [policy(action="Enforce", allowImmutableTags=True)], VALIDATING)
    assert the_plan.repositories_for_mutability == frozenset({REPO})


def test_digest_pinned_reference_needs_no_mutability() -> None:
    rules = [policy(action="Enforce", allowImmutableTags=True)]
    assert make_plan(api_pod(PINNED), rules, VALIDATING).repositories_for_mutability == frozenset()


def enforce_with_mutability(
    image: str, query: outcomes.Query, setting: outcomes.MutabilityOutcome, **spec: Any
) -> decisions.Verdict:
    rules = [policy(action="Enforce", allowImmutableTags=True, **spec)]
    return judge(api_pod(image), rules, {query: FOUND}, VALIDATING, mutabilities={REPO: setting})


def test_allow_immutable_tags_accepts_a_tag_of_an_immutable_repository() -> None:
    setting = outcomes.TagMutability(outcomes.Mutability.IMMUTABLE)
    assert enforce_with_mutability(IMAGE, BY_TAG, setting).allowed


def test_allow_immutable_tags_accepts_a_tag_not_excluded_from_immutability() -> None:
    setting = outcomes.TagMutability(
        outcomes.Mutability.IMMUTABLE_WITH_EXCLUSION, ("latest", "dev-*")
    )
    assert enforce_with_mutability(IMAGE, BY_TAG, setting).allowed


def test_allow_immutable_tags_denies_a_tag_excluded_from_immutability() -> None:
    setting = outcomes.TagMutability(
        outcomes.Mutability.IMMUTABLE_WITH_EXCLUSION, ("latest", "dev-*")
    )
    dev = outcomes.Query(REPO, tag="dev-42")
    verdict = enforce_with_mutability(f"{ECR}/shop/api:dev-42", dev, setting)
    assert not verdict.allowed
    assert "referenced by the mutable tag 'dev-42'" in verdict.message


def test_allow_immutable_tags_judges_a_reference_without_tag_as_latest() -> None:
    setting = outcomes.TagMutability(outcomes.Mutability.IMMUTABLE_WITH_EXCLUSION, ("latest",))
    latest = outcomes.Query(REPO, tag="latest")
    verdict = enforce_with_mutability(f"{ECR}/shop/api", latest, setting)
    assert "referenced by the mutable tag 'latest'" in verdict.message


def test_allow_immutable_tags_accepts_a_tag_made_immutable_by_exclusion() -> None:
    setting = outcomes.TagMutability(outcomes.Mutability.MUTABLE_WITH_EXCLUSION, ("v*",))
    assert enforce_with_mutability(IMAGE, BY_TAG, setting).allowed


def test_allow_immutable_tags_denies_a_tag_left_mutable_by_exclusions() -> None:
    setting = outcomes.TagMutability(outcomes.Mutability.MUTABLE_WITH_EXCLUSION, ("release-*",))
    assert not enforce_with_mutability(IMAGE, BY_TAG, setting).allowed


def test_allow_immutable_tags_denies_a_tag_of_a_mutable_repository() -> None:
    setting = outcomes.TagMutability(outcomes.Mutability.MUTABLE)
    verdict = enforce_with_mutability(IMAGE, BY_TAG, setting)
    assert not verdict.allowed
    assert "referenced by the mutable tag 'v1'; pin it by digest" in verdict.message


def test_unreadable_mutability_denies_under_on_resolve_error_deny() -> None:
    verdict = enforce_with_mutability(IMAGE, BY_TAG, outcomes.Unknown("AccessDenied"))
    assert not verdict.allowed
    assert "tag mutability could not be read (AccessDenied)" in verdict.message


def test_unreadable_mutability_is_a_warning_under_on_resolve_error_allow() -> None:
    unknown = outcomes.Unknown("AccessDenied")
    verdict = enforce_with_mutability(IMAGE, BY_TAG, unknown, onResolveError="Allow")
    assert verdict.allowed
    assert has_reason(verdict.warnings, names.REASON_TAG_NOT_PINNED)


def test_enforce_denies_a_tag_only_reference_even_when_the_registry_could_not_tell() -> None:
    rules = [policy(action="Enforce", onResolveError="Allow")]
    verdict = judge(api_pod(), rules, {BY_TAG: UNKNOWN}, VALIDATING)
    assert not verdict.allowed
    assert f"[{names.REASON_TAG_NOT_PINNED};" in verdict.message
    assert has_reason(verdict.warnings, names.REASON_REGISTRY_UNAVAILABLE)


def test_enforce_denies_a_tag_only_reference_outside_ecr_even_under_allow() -> None:
    rules = [policy(action="Enforce", images=["**"], onResolveError="Allow")]
    verdict = judge(api_pod("nginx:1.25"), rules, {NGINX_BY_TAG: FOUND}, VALIDATING)
    assert not verdict.allowed
    assert "referenced by tag only" in verdict.message


def test_allow_immutable_tags_asks_no_mutability_outside_ecr() -> None:
    rules = [policy(action="Enforce", images=["**"], allowImmutableTags=True)]
    the_plan = make_plan(api_pod("nginx:1.25"), rules, VALIDATING)
    assert the_plan.repositories_for_mutability == frozenset()


def test_allow_immutable_tags_denies_a_tag_outside_ecr_even_under_allow() -> None:
    rules = [
        policy(action="Enforce", images=["**"], allowImmutableTags=True, onResolveError="Allow")
    ]
    verdict = judge(api_pod("nginx:1.25"), rules, {NGINX_BY_TAG: FOUND}, VALIDATING)
    assert not verdict.allowed
    assert "only Amazon ECR makes tags immutable" in verdict.message


def test_enforce_accepts_a_digest_outside_ecr_that_exists() -> None:
    rules = [policy(action="Enforce", images=["**"])]
    by_digest = outcomes.Query(NGINX_REPO, digest=DIGEST)
    verdict = judge(api_pod(f"nginx@{DIGEST}"), rules, {by_digest: FOUND}, VALIDATING)
    assert (verdict.allowed, verdict.warnings) == (True, ())


# Audit


def test_audit_warns_about_a_missing_image_and_admits() -> None:
    verdict = judge(api_pod(), [policy(action="Audit")], {BY_TAG: MISSING}, VALIDATING)
    assert (verdict.allowed, verdict.denials) == (True, ())
    assert has_reason(verdict.warnings, names.REASON_IMAGE_MISSING)


def test_audit_warns_about_a_tag_only_reference() -> None:
    verdict = judge(api_pod(), [policy("watch", action="Audit")], {BY_TAG: FOUND}, VALIDATING)
    assert verdict.allowed
    assert verdict.warnings == (
        f"containers[api]: image '{IMAGE}' (repository shop/api in registry {ECR},"
        " account 111122223333, region eu-west-1): referenced by tag only; pin it by digest"
        f" (repo@sha256:...) [{names.REASON_TAG_NOT_PINNED}; DigestPolicy watch, action Audit]",
    )


def test_audit_only_warns_about_a_registry_error_even_with_on_resolve_error_deny() -> None:
    rules = [policy(action="Audit", onResolveError="Deny")]
    verdict = judge(api_pod(PINNED), rules, {BY_DIGEST: UNKNOWN}, VALIDATING)
    assert verdict.allowed
    assert has_reason(verdict.warnings, names.REASON_REGISTRY_UNAVAILABLE)


def test_audit_only_warns_about_a_corrupt_answer() -> None:
    verdict = judge(api_pod(PINNED), [policy(action="Audit")], {BY_DIGEST: CORRUPT}, VALIDATING)
    assert verdict.allowed
    assert has_reason(verdict.warnings, names.REASON_INTEGRITY)


def test_audit_only_warns_about_an_invalid_reference() -> None:
    verdict = judge(api_pod("app:"), [policy(action="Audit")], {}, VALIDATING)
    assert verdict.allowed
    assert has_reason(verdict.warnings, names.REASON_INVALID_REFERENCE)


def test_audit_findings_are_recorded_as_not_denying() -> None:
    verdict = judge(api_pod(), [policy(action="Audit")], {BY_TAG: MISSING}, VALIDATING)
    assert [(f.reason, f.denies) for f in verdict.findings] == [(names.REASON_IMAGE_MISSING, False)]


def test_audit_with_allow_immutable_tags_asks_for_the_repository_mutability() -> None:
    rules = [policy(action="Audit", allowImmutableTags=True)]
    assert make_plan(api_pod(), rules, VALIDATING).repositories_for_mutability == frozenset({REPO})


def test_audit_with_allow_immutable_tags_is_quiet_about_an_immutable_tag() -> None:
    rules = [policy(action="Audit", allowImmutableTags=True)]
    setting = outcomes.TagMutability(outcomes.Mutability.IMMUTABLE)
    verdict = judge(api_pod(), rules, {BY_TAG: FOUND}, VALIDATING, mutabilities={REPO: setting})
    assert (verdict.allowed, verdict.warnings) == (True, ())


# Several policies on one image


def test_image_is_rewritten_when_any_matching_policy_is_mutate() -> None:
    rules = [policy("audit", action="Audit"), policy("pin")]
    verdict = judge(api_pod(), rules, {BY_TAG: FOUND})
    assert verdict.edits == (decisions.Edit("/spec/containers/0/image", PINNED),)


def test_tag_is_kept_only_when_every_mutate_policy_keeps_it() -> None:
    rules = [policy("keep"), policy("drop", keepTag=False)]
    verdict = judge(api_pod(), rules, {BY_TAG: FOUND})
    assert verdict.edits == (
        decisions.Edit("/spec/containers/0/image", f"{ECR}/shop/api@{DIGEST}"),
    )


def test_image_is_denied_when_any_enforce_policy_is_violated() -> None:
    rules = [policy("audit", action="Audit"), policy("strict", action="Enforce")]
    verdict = judge(api_pod(), rules, {BY_TAG: FOUND}, VALIDATING)
    assert not verdict.allowed
    assert "DigestPolicy strict, action Enforce" in verdict.message
    assert "DigestPolicy audit, action Audit" in verdict.warnings[0]


def test_on_resolve_error_is_deny_when_any_deny_capable_policy_says_deny() -> None:
    rules = [
        policy("lenient", action="Enforce", onResolveError="Allow"),
        policy("strict", action="Enforce", onResolveError="Deny"),
    ]
    verdict = judge(api_pod(PINNED), rules, {BY_DIGEST: UNKNOWN}, VALIDATING)
    assert not verdict.allowed
    assert [f.denies for f in verdict.findings] == [True, True]


def test_an_audit_policy_saying_deny_does_not_make_registry_errors_deny() -> None:
    rules = [
        policy("lenient", action="Enforce", onResolveError="Allow"),
        policy("watch", action="Audit", onResolveError="Deny"),
    ]
    verdict = judge(api_pod(PINNED), rules, {BY_DIGEST: UNKNOWN}, VALIDATING)
    assert verdict.allowed


def test_smallest_max_stale_of_the_matching_policies_goes_with_the_query() -> None:
    rules = [policy("slow", maxStale="1h"), policy("fast", maxStale="30s")]
    assert dict(make_plan(api_pod(), rules).queries) == {BY_TAG: 30.0}


def test_an_audit_policys_smaller_max_stale_does_not_shorten_a_mutate_policys() -> None:
    rules = [policy("pin", maxStale="10m"), policy("watch", action="Audit", maxStale="0")]
    assert dict(make_plan(api_pod(), rules).queries) == {BY_TAG: 600.0}


def test_audit_policies_alone_use_their_own_smallest_max_stale() -> None:
    rules = [policy("a", action="Audit", maxStale="1m"), policy("b", action="Audit", maxStale="2m")]
    assert dict(make_plan(api_pod(), rules, VALIDATING).queries) == {BY_TAG: 60.0}


def test_each_image_gets_the_max_stale_of_its_own_policies() -> None:
    rules = [
        policy("api", images=[f"{ECR}/shop/api"], maxStale="1m"),
        policy("web", images=[f"{ECR}/shop/web"], maxStale="5m"),
    ]
    assert dict(make_plan(pod(IMAGE, WEB_IMAGE), rules).queries) == {
        BY_TAG: 60.0,
        WEB_BY_TAG: 300.0,
    }


def test_subject_carries_the_policies_acting_in_its_phase_in_name_order() -> None:
    rules = [policy("zeta"), policy("alpha"), policy("watch", action="Audit")]
    [subject] = make_plan(api_pod(), rules).subjects
    assert [p.name for p in subject.policies] == ["alpha", "zeta"]


# Updates


def test_update_examines_only_containers_whose_image_changed() -> None:
    old = pod(IMAGE, WEB_IMAGE)
    new = pod(IMAGE, f"{ECR}/shop/web:v3")
    the_plan = make_plan(new, [policy()], operation="UPDATE", old=old)
    assert [s.container.container for s in the_plan.subjects] == ["c1"]


def test_update_that_changes_no_image_examines_nothing() -> None:
    old = api_pod()
    new = api_pod(labels={"added": "by-a-controller"})
    the_plan = make_plan(new, [policy(action="Enforce")], VALIDATING, operation="UPDATE", old=old)
    assert (the_plan.subjects, dict(the_plan.queries)) == ((), {})


def test_update_does_not_deny_an_image_that_was_already_running() -> None:
    old = api_pod()
    new = api_pod(labels={"added": "by-a-controller"})
    rules = [policy(action="Enforce")]
    verdict = judge(new, rules, {BY_TAG: MISSING}, VALIDATING, operation="UPDATE", old=old)
    assert verdict.allowed


def test_update_rewrites_a_changed_image() -> None:
    old = api_pod(f"{ECR}/shop/api:v0")
    verdict = judge(api_pod(), [policy()], {BY_TAG: FOUND}, operation="UPDATE", old=old)
    assert verdict.edits == (decisions.Edit("/spec/containers/0/image", PINNED),)


def test_added_ephemeral_container_is_the_only_one_examined() -> None:
    old = pod(IMAGE, init=(IMAGE,))
    new = pod(IMAGE, init=(IMAGE,), ephemeral=(WEB_IMAGE,))
    the_plan = make_plan(new, [policy()], operation="UPDATE", old=old)
    assert [s.container.label for s in the_plan.subjects] == ["ephemeralContainers[e0]"]
    assert set(the_plan.queries) == {WEB_BY_TAG}


def test_added_ephemeral_container_is_pinned_at_its_own_pointer() -> None:
    old = pod(IMAGE)
    new = pod(IMAGE, ephemeral=(WEB_IMAGE,))
    verdict = judge(new, [policy()], {WEB_BY_TAG: WEB_FOUND}, operation="UPDATE", old=old)
    assert verdict.edits == (
        decisions.Edit("/spec/ephemeralContainers/0/image", f"{WEB_IMAGE}@{WEB_DIGEST}"),
    )


def test_old_object_is_ignored_on_create() -> None:
    the_plan = make_plan(api_pod(), [policy()], operation="CREATE", old=api_pod())
    assert len(the_plan.subjects) == 1


# Workloads


def test_workload_is_not_examined_in_the_mutating_phase() -> None:
    the_plan = make_plan(deployment(IMAGE), [policy()], MUTATING)
    assert the_plan.subjects == ()


def test_workload_with_a_missing_image_is_denied_under_mutate() -> None:
    verdict = judge(deployment(IMAGE), [policy()], {BY_TAG: MISSING}, VALIDATING)
    assert not verdict.allowed
    assert f"[{names.REASON_IMAGE_MISSING}; DigestPolicy pin, action Mutate]" in verdict.message


def test_workload_tag_only_reference_is_accepted_under_mutate_and_not_rewritten() -> None:
    verdict = judge(deployment(IMAGE), [policy()], {BY_TAG: FOUND}, VALIDATING)
    assert (verdict.allowed, verdict.edits, verdict.warnings) == (True, (), ())


def test_workload_tag_only_reference_is_denied_under_enforce() -> None:
    verdict = judge(deployment(IMAGE), [policy(action="Enforce")], {BY_TAG: FOUND}, VALIDATING)
    assert not verdict.allowed
    assert f"[{names.REASON_TAG_NOT_PINNED};" in verdict.message


def test_cronjob_with_a_missing_image_is_denied_naming_its_container() -> None:
    verdict = judge(cronjob(IMAGE), [policy()], {BY_TAG: MISSING}, VALIDATING)
    assert not verdict.allowed
    assert verdict.message.startswith(f"containers[job]: image '{IMAGE}'")


def test_cronjob_subject_points_into_the_job_template() -> None:
    [subject] = make_plan(cronjob(IMAGE), [policy()], VALIDATING).subjects
    assert subject.container.pointer == "/spec/jobTemplate/spec/template/spec/containers/0/image"


def test_workload_is_selected_by_its_template_labels() -> None:
    web = policy(podSelector={"matchLabels": {"app": "web"}})
    assert make_plan(deployment(IMAGE, {"app": "db"}), [web], VALIDATING).subjects == ()
    assert len(make_plan(deployment(IMAGE, {"app": "web"}), [web], VALIDATING).subjects) == 1


def test_workload_update_examines_only_changed_template_images() -> None:
    old = deployment(IMAGE)
    new = deployment(IMAGE)
    new["spec"]["replicas"] = 5
    the_plan = make_plan(new, [policy()], VALIDATING, operation="UPDATE", old=old)
    assert the_plan.subjects == ()


def test_plan_records_phase_and_kind() -> None:
    the_plan = make_plan(cronjob(IMAGE), [], VALIDATING)
    assert (the_plan.phase, the_plan.kind) == (VALIDATING, "CronJob")


# Applying edits


def test_the_patch_replaces_the_image_of_every_list_and_records_originals() -> None:
    obj = pod(WEB_IMAGE, init=(IMAGE,), ephemeral=(WEB_IMAGE,))
    verdict = judge(obj, [policy()], {BY_TAG: FOUND, WEB_BY_TAG: WEB_FOUND})
    obj = applied(obj, verdict)
    assert obj["spec"]["initContainers"][0]["image"] == PINNED
    assert obj["spec"]["containers"][0]["image"] == f"{WEB_IMAGE}@{WEB_DIGEST}"
    assert obj["spec"]["ephemeralContainers"][0]["image"] == f"{WEB_IMAGE}@{WEB_DIGEST}"
    assert json.loads(obj["metadata"]["annotations"][names.ANNOTATION_ORIGINAL_IMAGES]) == {
        "initContainers/i0": IMAGE,
        "containers/c0": WEB_IMAGE,
        "ephemeralContainers/e0": WEB_IMAGE,
    }


def test_the_patch_touches_only_the_edited_container() -> None:
    obj = pod("nginx:1.25", IMAGE)
    verdict = judge(obj, [policy()], {BY_TAG: FOUND})
    obj = applied(obj, verdict)
    assert [c["image"] for c in obj["spec"]["containers"]] == ["nginx:1.25", PINNED]


def test_the_patch_keeps_other_annotations() -> None:
    obj = api_pod(annotations={"team": "shop"})
    obj = applied(obj, judge(obj, [policy()], {BY_TAG: FOUND}))
    assert obj["metadata"]["annotations"]["team"] == "shop"


def test_the_patch_creates_annotations_when_there_are_none() -> None:
    obj = api_pod()
    obj = applied(obj, judge(obj, [policy()], {BY_TAG: FOUND}))
    assert names.ANNOTATION_ORIGINAL_IMAGES in obj["metadata"]["annotations"]


def test_the_patch_replaces_null_annotations() -> None:
    obj = api_pod()
    obj["metadata"]["annotations"] = None
    obj = applied(obj, judge(obj, [policy()], {BY_TAG: FOUND}))
    assert set(obj["metadata"]["annotations"]) == {names.ANNOTATION_ORIGINAL_IMAGES}


def test_the_patch_follows_a_cronjob_pointer() -> None:
    obj = cronjob(IMAGE)
    edit = decisions.Edit("/spec/jobTemplate/spec/template/spec/containers/0/image", PINNED)
    verdict = decisions.Verdict(True, (), (), (edit,), {}, ())
    obj = applied(obj, verdict)
    assert (
        obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == PINNED
    )
    assert "annotations" not in obj["metadata"]


def test_the_patch_of_an_empty_verdict_changes_nothing() -> None:
    obj = api_pod()
    before = copy.deepcopy(obj)
    obj = applied(obj, judge(obj, [], {}))
    assert obj == before


def test_verdict_message_joins_every_denial() -> None:
    verdict = judge(pod(IMAGE, WEB_IMAGE), [policy()], {BY_TAG: MISSING, WEB_BY_TAG: MISSING})
    assert len(verdict.denials) == 2
    assert verdict.message == "; ".join(verdict.denials)


# Properties over many pods, policies and registry answers

IMAGES = [
    IMAGE,
    WEB_IMAGE,
    PINNED,
    f"{ECR}/shop/api",
    f"{ECR}/shop/api@{DIGEST}",
    "nginx:1.25",
    f"nginx@{DIGEST}",
    "app:",
    f"{ECR}/Shop/api:v1",
]
RULES: list[dict[str, Any]] = [
    {"action": "Mutate"},
    {"action": "Mutate", "keepTag": False, "onResolveError": "Allow", "maxStale": "0"},
    {"action": "Enforce"},
    {"action": "Enforce", "allowImmutableTags": True, "onResolveError": "Allow"},
    {"action": "Audit", "images": ["**"]},
    {"action": "Mutate", "images": [f"{ECR}/shop/web"], "podSelector": {"matchLabels": {"a": "b"}}},
]
OUTCOMES: list[outcomes.Outcome] = [
    FOUND,
    outcomes.Found(MOVED, OCI_INDEX, age_seconds=30.0),
    MISSING,
    UNKNOWN,
    CORRUPT,
]
MUTABILITIES: list[outcomes.MutabilityOutcome] = [
    outcomes.TagMutability(outcomes.Mutability.IMMUTABLE),
    outcomes.TagMutability(outcomes.Mutability.MUTABLE),
    outcomes.Unknown("AccessDenied"),
]


@settings(max_examples=300, deadline=None)
@given(
    images=st.lists(st.sampled_from(IMAGES), min_size=1, max_size=4),
    init=st.lists(st.sampled_from(IMAGES), max_size=2),
    ephemeral=st.lists(st.sampled_from(IMAGES), max_size=2),
    rules=st.lists(st.sampled_from(range(len(RULES))), max_size=3, unique=True),
    phase=st.sampled_from([MUTATING, VALIDATING]),
    labels=st.sampled_from([{}, {"a": "b"}]),
    data=st.data(),
)
def test_every_verdict_is_consistent_and_mutation_is_idempotent(
    images: list[str],
    init: list[str],
    ephemeral: list[str],
    rules: list[int],
    phase: decisions.Phase,
    labels: dict[str, str],
    data: st.DataObject,
) -> None:
    obj = pod(*images, init=tuple(init), ephemeral=tuple(ephemeral), labels=labels)
    rule_set = [policy(f"p{i}", **RULES[i]) for i in rules]
    the_plan = make_plan(obj, rule_set, phase)
    results = {q: data.draw(st.sampled_from(OUTCOMES)) for q in the_plan.queries}
    mutabilities = {
        r: data.draw(st.sampled_from(MUTABILITIES)) for r in the_plan.repositories_for_mutability
    }
    verdict = decisions.decide(the_plan, results, mutabilities)

    assert verdict.allowed == (verdict.denials == ())
    assert all(f.denies == (f.message in verdict.denials) for f in verdict.findings)
    assert not any(f.denies for f in verdict.findings if f.policy.action is policies.Action.AUDIT)
    if not verdict.allowed or phase is VALIDATING:
        assert (verdict.edits, verdict.annotations) == ((), {})
    assert bool(verdict.edits) == bool(verdict.annotations)

    mutated = applied(obj, verdict)
    for edit in verdict.edits:
        assert references.parse(edit.value).digest is not None
    if verdict.edits:
        originals = original_images(verdict)
        assert len(originals) == len(verdict.edits)
        assert set(originals.values()) <= set(IMAGES)

    # Reinvoked on its own output, with every digest found, nothing pinned is edited again.
    again = make_plan(mutated, rule_set, phase)
    found = {
        q: FOUND if q.digest is None else outcomes.Found(q.digest, OCI_INDEX) for q in again.queries
    }
    second = decisions.decide(again, found, mutabilities)
    assert all(e.pointer not in {edit.pointer for edit in verdict.edits} for e in second.edits)
    # ...and applying its patch keeps every image and original the first one recorded.
    twice = applied(mutated, second)
    for edit in verdict.edits:
        assert jsonpatch.JsonPointer(edit.pointer).resolve(twice) == edit.value
    if verdict.edits:
        assert (
            original_images(verdict).items()
            <= json.loads(
                twice["metadata"]["annotations"][names.ANNOTATION_ORIGINAL_IMAGES]
            ).items()
        )


def test_a_huge_image_string_is_not_echoed_whole_in_the_denial() -> None:
    huge = f"{ECR}/" + "a" * (1 << 20) + ":v1"
    verdict = judge(pod(huge), [policy(action="Enforce")], {}, VALIDATING)
    assert not verdict.allowed
    assert len(verdict.message) < 1000
    assert f"({len(huge)} characters)" in verdict.message
    assert "at most 255" in verdict.message
