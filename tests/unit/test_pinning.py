"""The pure half of `digestguard pin`: which images, under which rules, and their fate."""

from typing import Any

import pytest

from webhook import errors, names
from webhook.core import outcomes, pinning, policies, references

DIGEST = references.Digest("sha256:" + "a" * 64)
OTHER = references.Digest("sha256:" + "b" * 64)
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def deployment(*images: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "template": {
                "metadata": {"labels": labels or {}},
                "spec": {
                    "initContainers": [{"name": "init", "image": images[0]}],
                    "containers": [
                        {"name": f"c{index}", "image": image}
                        for index, image in enumerate(images[1:])
                    ],
                },
            }
        },
    }


def policy(name: str, **spec: Any) -> policies.Policy:
    return policies.parse(name, 1, {"images": ["**"], **spec})


def test_without_policies_every_image_is_a_target_keeping_its_tag() -> None:
    found = pinning.targets(deployment("a:1", "b:2", "c@" + DIGEST), pinning.Rules())
    assert [t.container.image for t in found] == ["a:1", "b:2", "c@" + DIGEST]
    assert all(t.keep_tag for t in found)


def test_target_paths_lead_from_the_document_root_to_the_image() -> None:
    found = pinning.targets(deployment("a:1", "b:2"), pinning.Rules(), prefix=("items", 3))
    assert [t.path for t in found] == [
        ("items", 3, "spec", "template", "spec", "initContainers", 0, "image"),
        ("items", 3, "spec", "template", "spec", "containers", 0, "image"),
    ]


@pytest.mark.parametrize("kind", ["ConfigMap", "Service", "Kustomization", ""])
def test_objects_without_a_pod_spec_have_no_targets(kind: str) -> None:
    obj = {"kind": kind, "spec": {"containers": [{"name": "x", "image": "a:1"}]}}
    assert pinning.targets(obj, pinning.Rules()) == ()


def test_every_workload_kind_the_webhook_knows_has_a_pod_spec() -> None:
    kinds = {
        "deployments": "Deployment",
        "statefulsets": "StatefulSet",
        "daemonsets": "DaemonSet",
        "replicasets": "ReplicaSet",
        "replicationcontrollers": "ReplicationController",
        "jobs": "Job",
        "cronjobs": "CronJob",
    }
    assert {kinds[plural] for _, _, _, plural in names.WORKLOADS} == set(kinds.values())
    assert all(pinning.has_pod_spec({"kind": kind}) for kind in [*kinds.values(), "Pod"])


def test_a_policy_pins_only_the_images_it_covers() -> None:
    rules = pinning.Rules(digest_policies=(policy("p", images=[f"{ECR}/**"]),))
    found = pinning.targets(deployment(f"{ECR}/app:1", "nginx:1"), rules)
    assert [t.container.image for t in found] == [f"{ECR}/app:1"]


def test_a_mutate_policy_with_keep_tag_false_drops_the_tag() -> None:
    rules = pinning.Rules(
        digest_policies=(policy("a", keepTag=False), policy("b", action="Enforce"))
    )
    [target] = pinning.targets({"kind": "Pod", "spec": {"containers": [{"image": "a:1"}]}}, rules)
    assert target.keep_tag is False


def test_without_a_mutate_policy_any_keep_tag_false_drops_the_tag() -> None:
    rules = pinning.Rules(
        digest_policies=(policy("a", action="Audit"), policy("b", action="Enforce", keepTag=False))
    )
    [target] = pinning.targets({"kind": "Pod", "spec": {"containers": [{"image": "a:1"}]}}, rules)
    assert target.keep_tag is False


def test_a_pod_selector_is_matched_against_the_template_labels() -> None:
    rules = pinning.Rules(digest_policies=(policy("p", podSelector={"matchLabels": {"a": "b"}}),))
    assert pinning.targets(deployment("x:1"), rules) == ()
    assert len(pinning.targets(deployment("x:1", labels={"a": "b"}), rules)) == 1


def test_a_namespace_selector_is_not_matched_without_namespace_labels() -> None:
    selective = policy("p", namespaceSelector={"matchLabels": {"team": "shop"}})
    assert len(pinning.targets(deployment("x:1"), pinning.Rules(digest_policies=(selective,)))) == 1


def test_a_namespace_selector_is_matched_against_the_given_labels() -> None:
    selective = policy("p", namespaceSelector={"matchLabels": {"team": "shop"}})
    other = pinning.Rules(digest_policies=(selective,), namespace_labels={"team": "billing"})
    same = pinning.Rules(digest_policies=(selective,), namespace_labels={"team": "shop"})
    assert pinning.targets(deployment("x:1"), other) == ()
    assert len(pinning.targets(deployment("x:1"), same)) == 1


def test_a_target_of_an_invalid_reference_carries_the_parser_problem() -> None:
    [target] = pinning.targets(
        {"kind": "Pod", "spec": {"containers": [{"image": "A:1"}]}}, pinning.Rules()
    )
    result = pinning.judge(target, {})
    assert result.status is pinning.Status.INVALID
    assert "lowercase" in result.detail


def one(image: str, rules: pinning.Rules | None = None) -> pinning.Target:
    [target] = pinning.targets(
        {"kind": "Pod", "spec": {"containers": [{"name": "c", "image": image}]}},
        rules or pinning.Rules(),
    )
    return target


def found(digest: references.Digest = DIGEST) -> outcomes.Found:
    return outcomes.Found(digest, "application/vnd.oci.image.index.v1+json")


def test_a_tag_found_in_the_registry_is_rewritten_to_tag_and_digest() -> None:
    target = one("nginx:1.27")
    result = pinning.judge(target, {target.lookup: found()})
    assert result.status is pinning.Status.REWRITE
    assert result.value == f"nginx:1.27@{DIGEST}"


def test_a_missing_tag_is_missing_with_the_registry_code() -> None:
    target = one("nginx:nope")
    missing = outcomes.Missing("ImageNotFound", "no such tag")
    result = pinning.judge(target, {target.lookup: missing})
    assert result.status is pinning.Status.MISSING
    assert result.detail == "tag 'nope' not found (ImageNotFound: no such tag)"


def test_an_unanswered_lookup_is_unknown() -> None:
    target = one("nginx:1")
    result = pinning.judge(target, {target.lookup: outcomes.Unknown("timed out")})
    assert result.status is pinning.Status.UNKNOWN


def test_a_corrupt_answer_fails() -> None:
    target = one("nginx:1")
    result = pinning.judge(target, {target.lookup: outcomes.Corrupt("bad bytes")})
    assert result.status in pinning.FAILED


def test_an_archived_image_fails_with_how_to_restore_it() -> None:
    target = one(f"{ECR}/app:1")
    archived = outcomes.Archived("ARCHIVED", "archived; restore it with aws ecr ...")
    result = pinning.judge(target, {target.lookup: archived})
    assert result.status is pinning.Status.ARCHIVED
    assert result.status in pinning.FAILED
    assert "restore it" in result.detail


def test_a_pull_through_tag_not_imported_yet_fails_as_it_cannot_be_pinned() -> None:
    target = one(f"{ECR}/docker-hub/library/nginx:1")
    not_imported = outcomes.NotImported("rule docker-hub -> registry-1.docker.io")
    result = pinning.judge(target, {target.lookup: not_imported})
    assert (result.status, result.value) == (pinning.Status.NOT_IMPORTED, None)
    assert result.status in pinning.FAILED
    assert "first pull by tag" in result.detail


def test_a_pinned_image_that_exists_is_verified_not_rewritten() -> None:
    target = one(f"nginx@{DIGEST}")
    result = pinning.judge(target, {target.lookup: found()})
    assert (result.status, result.value, result.note) == (pinning.Status.VERIFIED, None, None)


def test_a_pinned_tag_that_has_moved_is_verified_with_a_note() -> None:
    target = one(f"nginx:1@{DIGEST}")
    answers = {target.lookup: found(), target.tag_check: found(OTHER)}
    result = pinning.judge(target, answers)
    assert result.status is pinning.Status.VERIFIED
    assert result.note is not None
    assert OTHER in result.note


def test_queries_ask_each_image_once_and_the_tag_of_a_pinned_tag() -> None:
    targets = [one("nginx:1"), one("nginx:1"), one(f"redis:7@{DIGEST}")]
    assert [str(query) for query in pinning.queries(targets)] == [
        "docker.io/library/nginx:1",
        f"docker.io/library/redis@{DIGEST}",
        "docker.io/library/redis:7",
    ]


def test_policies_are_read_from_documents_and_other_kinds_left_out() -> None:
    documents = [
        (1, {"kind": "ConfigMap"}),
        (
            5,
            {
                "apiVersion": "digestguard.io/v1alpha1",
                "kind": "DigestPolicy",
                "metadata": {"name": "p"},
                "spec": {"images": ["**"], "keepTag": False},
            },
        ),
    ]
    [parsed] = pinning.parse_policies(documents)
    assert (parsed.name, parsed.keep_tag) == ("p", False)


def test_an_invalid_policy_names_its_line_and_field() -> None:
    document = {
        "apiVersion": "digestguard.io/v1alpha1",
        "kind": "DigestPolicy",
        "metadata": {"name": "p"},
        "spec": {"images": ["**"], "keepTag": "no"},
    }
    with pytest.raises(errors.InvalidManifest) as raised:
        pinning.parse_policies([(7, document)])
    assert (raised.value.line, str(raised.value)) == (
        7,
        "line 7: DigestPolicy p: spec.keepTag: must be true or false",
    )


def test_namespace_labels_are_key_value_pairs() -> None:
    assert pinning.parse_labels("a=b, c = d,,e=") == {"a": "b", "c": "d", "e": ""}
    with pytest.raises(errors.ConfigurationError, match="'oops' is not key=value"):
        pinning.parse_labels("a=b,oops")


def test_a_resource_list_is_recognised_by_kind_and_api_version() -> None:
    assert pinning.is_resource_list(
        {"apiVersion": "config.kubernetes.io/v1", "kind": "ResourceList"}
    )
    assert not pinning.is_resource_list({"apiVersion": "v1", "kind": "ResourceList"})
