"""One image, one decision, however its registry host is spelled.

Capitals, a trailing dot and the default port (`:443`, or `:80` for a registry
configured as plain HTTP) name the same registry. Every spelling must be matched,
routed and judged as that one registry, under every action: a spelling the policy
globs or the ECR host pattern missed would be admitted untouched.

Pure core only: each case states what the registry said and compares verdicts.
"""

import hashlib
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import names
from webhook.core import decisions, outcomes, policies, references

ECR_HOST = "111122223333.dkr.ecr.us-east-1.amazonaws.com"
CHART_GLOBS = [
    "*.dkr.ecr.*.amazonaws.com/**",
    "*.dkr.ecr-fips.*.amazonaws.com/**",
    "*.dkr-ecr.*.on.aws/**",
    "*.dkr.ecr.*.amazonaws.com.cn/**",
]
HTTPS_HOST = "registry.example.com"
PLAIN_HTTP_HOST = "mirror.example.internal"
PLAIN_HTTP = references.plain_http_hosts([PLAIN_HTTP_HOST])
DIGEST = references.Digest("sha256:" + hashlib.sha256(b"shop/api v1").hexdigest())
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Registry:
    """A registry host, the ports that are its default, and the policy globs over it."""

    def __init__(
        self,
        host: str,
        default_ports: tuple[str, ...],
        globs: list[str],
        plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP,
    ) -> None:
        self.host = host
        self.default_ports = default_ports
        self.globs = globs
        self.plain_http = plain_http

    def __repr__(self) -> str:
        return self.host


REGISTRIES = (
    Registry(ECR_HOST, (":443", ":0443"), CHART_GLOBS),
    Registry(HTTPS_HOST, (":443", ":00443"), [f"{HTTPS_HOST}/**"]),
    Registry(PLAIN_HTTP_HOST, (":80", ":080"), [f"{PLAIN_HTTP_HOST}/**"], PLAIN_HTTP),
)
FORMS = ("shop/api", "shop/api:v1", f"shop/api@{DIGEST}", f"shop/api:v1@{DIGEST}")
OUTCOMES: tuple[outcomes.Outcome, ...] = (
    outcomes.Found(DIGEST, OCI_INDEX),
    outcomes.Found(DIGEST, OCI_INDEX, age_seconds=120.0),
    outcomes.Missing("ImageNotFound", "Requested image not found"),
    outcomes.Unknown("ThrottlingException: Rate exceeded"),
    outcomes.Corrupt("sha256 of the manifest is not the digest the registry reported"),
)
MUTABILITIES: tuple[outcomes.MutabilityOutcome, ...] = (
    outcomes.TagMutability(outcomes.Mutability.IMMUTABLE),
    outcomes.TagMutability(outcomes.Mutability.MUTABLE),
    outcomes.Unknown("AccessDeniedException"),
)


def spellings_of(registry: Registry) -> st.SearchStrategy[str]:
    """The host with any mix of capitals, maybe a trailing dot, maybe a default port."""
    host = registry.host
    return st.builds(
        lambda capitals, dot, port: (
            "".join(c.upper() if up else c for c, up in zip(host, capitals, strict=True))
            + ("." if dot else "")
            + port
        ),
        st.lists(st.booleans(), min_size=len(host), max_size=len(host)),
        st.booleans(),
        st.sampled_from(("", *registry.default_ports)),
    )


def pod(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"containers": [{"name": "api", "image": image}]},
    }


def verdicts(
    image: str,
    rule: policies.Policy,
    registry: Registry,
    outcome: outcomes.Outcome,
    mutability: outcomes.MutabilityOutcome,
) -> dict[decisions.Phase, tuple[decisions.Plan, decisions.Verdict]]:
    """The plan and verdict of both webhooks, the registry answering `outcome` to all."""
    review = decisions.Review(operation="CREATE", namespace="shop", obj=pod(image))
    answers = {}
    for phase in decisions.Phase:
        the_plan = decisions.plan(review, [rule], {}, phase, plain_http=registry.plain_http)
        results = dict.fromkeys(the_plan.queries, outcome)
        mutabilities = dict.fromkeys(the_plan.repositories_for_mutability, mutability)
        answers[phase] = (the_plan, decisions.decide(the_plan, results, mutabilities))
    return answers


def decision(
    answers: Mapping[decisions.Phase, tuple[decisions.Plan, decisions.Verdict]],
) -> list[Any]:
    """What must not depend on the spelling: everything but the image string in messages."""
    summary: list[Any] = []
    for phase, (the_plan, verdict) in sorted(answers.items(), key=lambda item: item[0].value):
        summary.append(
            (
                phase,
                the_plan.queries,
                the_plan.repositories_for_mutability,
                [s.reference.ecr if s.reference else None for s in the_plan.subjects],
                verdict.allowed,
                [(f.reason, f.policy.name, f.denies) for f in verdict.findings],
                [(e.pointer, e.value.rpartition("@")[2]) for e in verdict.edits],
                len(verdict.warnings),
            )
        )
    return summary


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    registry=st.sampled_from(REGISTRIES),
    form=st.sampled_from(FORMS),
    action=st.sampled_from(list(policies.Action)),
    keep_tag=st.booleans(),
    allow_immutable_tags=st.booleans(),
    on_resolve_error=st.sampled_from(list(policies.OnResolveError)),
    outcome=st.sampled_from(OUTCOMES),
    mutability=st.sampled_from(MUTABILITIES),
)
def test_every_spelling_of_one_image_gets_the_decision_of_its_canonical_spelling(
    data: st.DataObject,
    registry: Registry,
    form: str,
    action: policies.Action,
    keep_tag: bool,
    allow_immutable_tags: bool,
    on_resolve_error: policies.OnResolveError,
    outcome: outcomes.Outcome,
    mutability: outcomes.MutabilityOutcome,
) -> None:
    rule = policies.parse(
        "spelled",
        1,
        {
            "images": registry.globs,
            "action": action.value,
            "keepTag": keep_tag,
            "allowImmutableTags": allow_immutable_tags,
            "onResolveError": on_resolve_error.value,
        },
    )
    canonical = verdicts(f"{registry.host}/{form}", rule, registry, outcome, mutability)
    mutate = action is policies.Action.MUTATE
    acting = decisions.Phase.MUTATING if mutate else decisions.Phase.VALIDATING
    assert canonical[acting][0].subjects, "the policy must apply to the canonical spelling"

    for host in data.draw(st.lists(spellings_of(registry), min_size=1, max_size=4), "hosts"):
        spelled = verdicts(f"{host}/{form}", rule, registry, outcome, mutability)
        assert decision(spelled) == decision(canonical), host


@settings(max_examples=150, deadline=None)
@given(data=st.data(), registry=st.sampled_from(REGISTRIES), keep_tag=st.booleans())
def test_a_pinned_spelling_keeps_its_host_as_written_and_is_not_pinned_again(
    data: st.DataObject, registry: Registry, keep_tag: bool
) -> None:
    host = data.draw(spellings_of(registry), "host")
    rule = policies.parse("spelled", 1, {"images": registry.globs, "keepTag": keep_tag})
    found = outcomes.Found(DIGEST, OCI_INDEX)
    mutable = outcomes.TagMutability(outcomes.Mutability.MUTABLE)

    first = verdicts(f"{host}/shop/api:v1", rule, registry, found, mutable)
    (edit,) = first[decisions.Phase.MUTATING][1].edits
    expected = f"{host}/shop/api:v1@{DIGEST}" if keep_tag else f"{host}/shop/api@{DIGEST}"
    assert edit.value == expected

    again = verdicts(edit.value, rule, registry, found, mutable)
    for _, verdict in again.values():
        assert (verdict.allowed, verdict.edits, verdict.warnings) == (True, (), ())


@pytest.mark.parametrize(
    "host",
    [
        f"{ECR_HOST}:443",
        f"{ECR_HOST}.",
        f"{ECR_HOST}.:443",
        ECR_HOST.upper(),
        ECR_HOST,
    ],
)
def test_a_tag_only_ecr_image_is_denied_under_enforce_however_its_host_is_spelled(
    host: str,
) -> None:
    rule = policies.parse("enforce", 1, {"images": CHART_GLOBS, "action": "Enforce"})
    registry = REGISTRIES[0]
    found = outcomes.Found(DIGEST, OCI_INDEX)
    mutable = outcomes.TagMutability(outcomes.Mutability.MUTABLE)

    _, verdict = verdicts(f"{host}/repo:v1", rule, registry, found, mutable)[
        decisions.Phase.VALIDATING
    ]

    assert verdict.allowed is False
    assert [f.reason for f in verdict.findings] == [names.REASON_TAG_NOT_PINNED]
    assert f"registry {ECR_HOST}, account 111122223333, region us-east-1" in verdict.message


def test_http_port_of_a_registry_not_configured_as_plain_http_is_another_registry() -> None:
    rule = policies.parse("enforce", 1, {"images": [f"{HTTPS_HOST}/**"], "action": "Enforce"})
    https = REGISTRIES[1]
    found = outcomes.Found(DIGEST, OCI_INDEX)
    mutable = outcomes.TagMutability(outcomes.Mutability.MUTABLE)

    the_plan, _ = verdicts(f"{HTTPS_HOST}:80/repo:v1", rule, https, found, mutable)[
        decisions.Phase.VALIDATING
    ]

    assert not the_plan.subjects
