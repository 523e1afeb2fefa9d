"""DigestPolicy specs: defaults, errors that name the field, globs, and which policies apply."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import errors
from webhook.core import policies, selectors

ECR = "111122223333.dkr.ecr.eu-west-1.amazonaws.com"
ECR_GLOB = "*.dkr.ecr.*.amazonaws.com/**"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
SPEC_FIELD = st.sampled_from(
    [
        "namespaceSelector",
        "podSelector",
        "images",
        "excludeImages",
        "action",
        "keepTag",
        "allowImmutableTags",
        "allowPullThroughFirstPull",
        "onResolveError",
        "maxStale",
    ]
)
GLOBS = st.lists(st.text(alphabet="ab*?/.:@ -", max_size=10), max_size=3)


def parse(name: str = "pin", generation: int = 1, **spec: Any) -> policies.Policy:
    return policies.parse(name, generation, {"images": [ECR_GLOB], **spec})


def message_of(spec: Any) -> str:
    with pytest.raises(errors.InvalidPolicy) as caught:
        policies.parse("pin", 1, spec)
    return str(caught.value)


def matches(pattern: str, name: str) -> bool:
    return policies.compile_glob(pattern).matches(name)


# Defaults and values


def test_action_defaults_to_mutate() -> None:
    assert parse().action is policies.Action.MUTATE


def test_keep_tag_defaults_to_true() -> None:
    assert parse().keep_tag is True


def test_allow_immutable_tags_defaults_to_false() -> None:
    assert parse().allow_immutable_tags is False


def test_on_resolve_error_defaults_to_deny() -> None:
    assert parse().on_resolve_error is policies.OnResolveError.DENY


def test_max_stale_defaults_to_ten_minutes() -> None:
    assert parse().max_stale_seconds == 600.0


def test_selectors_default_to_matching_everything() -> None:
    policy = parse()
    assert policy.namespace_selector == selectors.LabelSelector()
    assert policy.pod_selector == selectors.LabelSelector()


def test_exclude_images_defaults_to_none() -> None:
    assert parse().exclude_images == ()


def test_name_and_generation_are_kept() -> None:
    policy = parse("ecr-production", 7)
    assert (policy.name, policy.generation) == ("ecr-production", 7)


def test_every_field_is_read() -> None:
    policy = parse(
        namespaceSelector={"matchLabels": {"env": "prod"}},
        podSelector={"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]},
        excludeImages=[f"{ECR}/sandbox/**"],
        action="Enforce",
        keepTag=False,
        allowImmutableTags=True,
        allowPullThroughFirstPull=True,
        onResolveError="Allow",
        maxStale="30s",
    )
    assert policy.action is policies.Action.ENFORCE
    assert policy.allow_pull_through_first_pull
    assert policy.on_resolve_error is policies.OnResolveError.ALLOW
    assert (policy.keep_tag, policy.allow_immutable_tags, policy.max_stale_seconds) == (
        False,
        True,
        30.0,
    )
    assert [glob.pattern for glob in policy.exclude_images] == [f"{ECR}/sandbox/**"]
    assert policy.selects({"env": "prod"}, {})
    assert not policy.selects({"env": "prod"}, {"canary": "yes"})


def test_first_pulls_through_the_cache_are_not_allowed_by_default() -> None:
    assert not parse(action="Enforce").allow_pull_through_first_pull


def test_max_stale_of_zero_is_accepted() -> None:
    assert parse(maxStale="0").max_stale_seconds == 0.0


@pytest.mark.parametrize(
    ("action", "can_deny"), [("Mutate", True), ("Enforce", True), ("Audit", False)]
)
def test_only_audit_cannot_deny(action: str, can_deny: bool) -> None:
    assert parse(action=action).can_deny is can_deny


# Errors name the field


def test_spec_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(errors.InvalidPolicy):
        policies.parse("pin", 1, ["images"])


def test_unknown_field_is_refused_by_name() -> None:
    assert message_of({"images": [ECR_GLOB], "imagePatterns": []}) == (
        "spec.imagePatterns: unknown field"
    )


def test_missing_images_are_refused() -> None:
    assert message_of({}) == "spec.images: must list at least one glob"


def test_empty_images_are_refused() -> None:
    assert message_of({"images": []}) == "spec.images: must list at least one glob"


@pytest.mark.parametrize("images", [ECR_GLOB, [ECR_GLOB, 3], {"a": "b"}])
def test_images_that_are_not_a_list_of_strings_are_refused(images: Any) -> None:
    assert message_of({"images": images}) == "spec.images: must be a list of glob strings"


def test_exclude_images_that_are_not_a_list_are_refused() -> None:
    assert message_of({"images": [ECR_GLOB], "excludeImages": "x/**"}) == (
        "spec.excludeImages: must be a list of glob strings"
    )


def test_empty_pattern_is_refused() -> None:
    assert message_of({"images": [""]}) == "spec.images: a pattern must not be empty"


@pytest.mark.parametrize("pattern", [f"{ECR}/app:v1", f"{ECR}/app@sha256", "nginx:latest", "a b/c"])
def test_pattern_with_tag_digest_or_space_is_refused(pattern: str) -> None:
    assert message_of({"images": [pattern]}) == (
        f"spec.images: pattern {pattern!r} must match registry/repository only"
        " (no tag, digest or spaces)"
    )


def test_bad_exclude_pattern_is_refused_naming_exclude_images() -> None:
    assert message_of({"images": [ECR_GLOB], "excludeImages": [f"{ECR}/app:v1"]}).startswith(
        "spec.excludeImages: pattern"
    )


@pytest.mark.parametrize(
    "pattern", ["localhost:5000/**", "registry.example.com:*/team/*", "[::1]:5000/app"]
)
def test_pattern_with_a_registry_port_is_accepted(pattern: str) -> None:
    assert policies.compile_glob(pattern).pattern == pattern


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("action", "Block", "spec.action: 'Block' is not one of Mutate | Enforce | Audit"),
        ("action", "mutate", "spec.action: 'mutate' is not one of Mutate | Enforce | Audit"),
        ("action", ["Mutate"], "spec.action: ['Mutate'] is not one of Mutate | Enforce | Audit"),
        ("onResolveError", "Ignore", "spec.onResolveError: 'Ignore' is not one of Deny | Allow"),
        ("keepTag", "true", "spec.keepTag: must be true or false"),
        ("allowImmutableTags", 1, "spec.allowImmutableTags: must be true or false"),
        (
            "allowPullThroughFirstPull",
            "yes",
            "spec.allowPullThroughFirstPull: must be true or false",
        ),
        ("maxStale", 600, "spec.maxStale: must be a duration string such as '10m'"),
        (
            "maxStale",
            "10 minutes",
            "spec.maxStale: '10 minutes' is not a duration such as '30s', '10m' or '1h30m'",
        ),
        (
            "namespaceSelector",
            {"matchLabels": {"env": 1}},
            "spec.namespaceSelector.matchLabels.env: must be a string",
        ),
        (
            "podSelector",
            {"matchExpressions": [{"key": "a", "operator": "Is"}]},
            "spec.podSelector.matchExpressions[0].operator:"
            " must be one of DoesNotExist, Exists, In, NotIn",
        ),
    ],
)
def test_bad_value_is_refused_naming_the_field(field: str, value: Any, message: str) -> None:
    assert message_of({"images": [ECR_GLOB], field: value}) == message


def test_invalid_policy_error_carries_field_and_problem() -> None:
    with pytest.raises(errors.InvalidPolicy) as caught:
        policies.parse("pin", 1, {"images": [ECR_GLOB], "maxStale": 5})
    assert (caught.value.field, caught.value.problem) == (
        "maxStale",
        "must be a duration string such as '10m'",
    )


# Globs


def test_single_star_stays_within_one_segment() -> None:
    assert matches(f"{ECR}/*", f"{ECR}/app")
    assert not matches(f"{ECR}/*", f"{ECR}/team/app")


def test_double_star_crosses_segments() -> None:
    assert matches(f"{ECR}/**", f"{ECR}/team/sub/app")


def test_double_star_alone_matches_every_name() -> None:
    assert matches("**", "docker.io/library/nginx")


def test_question_mark_matches_exactly_one_character() -> None:
    assert matches(f"{ECR}/app-?", f"{ECR}/app-1")
    assert not matches(f"{ECR}/app-?", f"{ECR}/app-12")
    assert not matches(f"{ECR}/app-?", f"{ECR}/app-")


def test_question_mark_does_not_match_a_slash() -> None:
    assert not matches("team?app", "team/app")


def test_star_in_the_host_does_not_cross_into_the_repository() -> None:
    assert not matches("*/app", "registry.example.com/team/app")


def test_dots_are_literal() -> None:
    assert not matches("docker.io/library/nginx", "dockerxio/library/nginx")


def test_glob_must_match_the_whole_name() -> None:
    assert not matches(f"{ECR}/app", f"{ECR}/app-two")
    assert not matches("app", f"{ECR}/app")


def test_hosts_match_case_insensitively() -> None:
    assert matches(f"{ECR}/app", f"{ECR.upper()}/app")


def test_the_documented_ecr_glob_matches_every_commercial_ecr_repository() -> None:
    assert matches(ECR_GLOB, f"{ECR}/team/app")
    assert matches(ECR_GLOB, "444455556666.dkr.ecr.us-east-1.amazonaws.com/app")
    assert not matches(ECR_GLOB, "public.ecr.aws/team/app")


def test_registry_port_pattern_matches_names_with_that_port() -> None:
    assert matches("localhost:5000/**", "localhost:5000/team/app")
    assert not matches("localhost:5000/**", "localhost:5001/team/app")


# Which images a policy covers


def test_policy_covers_an_image_its_globs_match() -> None:
    assert parse().covers(f"{ECR}/team/app")


def test_policy_does_not_cover_an_image_outside_its_globs() -> None:
    assert not parse().covers("docker.io/library/nginx")


def test_exclusion_wins_over_inclusion() -> None:
    policy = parse(excludeImages=[f"{ECR}/sandbox/**"])
    assert not policy.covers(f"{ECR}/sandbox/app")
    assert policy.covers(f"{ECR}/prod/app")


def test_any_of_several_globs_covers() -> None:
    policy = parse(images=["docker.io/library/*", f"{ECR}/app"])
    assert policy.covers("docker.io/library/nginx")
    assert policy.covers(f"{ECR}/app")


def test_selects_needs_both_selectors_to_match() -> None:
    policy = parse(
        namespaceSelector={"matchLabels": {"env": "prod"}},
        podSelector={"matchLabels": {"app": "web"}},
    )
    assert policy.selects({"env": "prod"}, {"app": "web"})
    assert not policy.selects({"env": "dev"}, {"app": "web"})
    assert not policy.selects({"env": "prod"}, {"app": "db"})


# Which policies apply


def test_applicable_policies_are_ordered_by_name() -> None:
    found = policies.applicable([parse("zeta"), parse("alpha"), parse("mid")], f"{ECR}/app", {}, {})
    assert [p.name for p in found] == ["alpha", "mid", "zeta"]


def test_applicable_leaves_out_policies_whose_namespace_selector_does_not_match() -> None:
    prod = parse("prod", namespaceSelector={"matchLabels": {"env": "prod"}})
    found = policies.applicable([prod, parse("all")], f"{ECR}/app", {"env": "dev"}, {})
    assert [p.name for p in found] == ["all"]


def test_applicable_leaves_out_policies_whose_pod_selector_does_not_match() -> None:
    web = parse("web", podSelector={"matchLabels": {"app": "web"}})
    assert policies.applicable([web], f"{ECR}/app", {}, {"app": "db"}) == ()
    assert policies.applicable([web], f"{ECR}/app", {}, {"app": "web"}) == (web,)


def test_applicable_leaves_out_policies_that_do_not_cover_the_image() -> None:
    assert policies.applicable([parse()], "docker.io/library/nginx", {}, {}) == ()


def test_applicable_leaves_out_policies_that_exclude_the_image() -> None:
    policy = parse(excludeImages=[f"{ECR}/app"])
    assert policies.applicable([policy], f"{ECR}/app", {}, {}) == ()


def test_unparseable_image_is_under_every_policy_whose_selectors_match() -> None:
    elsewhere = parse("elsewhere", images=["registry.example.com/**"])
    other_ns = parse("other-ns", namespaceSelector={"matchLabels": {"env": "prod"}})
    found = policies.applicable([elsewhere, other_ns], None, {"env": "dev"}, {})
    assert found == (elsewhere,)


def test_no_policies_means_none_apply() -> None:
    assert policies.applicable([], f"{ECR}/app", {}, {}) == ()


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        JSON,
        st.dictionaries(SPEC_FIELD, st.one_of(JSON, GLOBS), max_size=5),
    )
)
def test_any_spec_parses_or_is_refused_as_an_invalid_policy(spec: Any) -> None:
    try:
        policy = policies.parse("pin", 1, spec)
    except errors.InvalidPolicy:
        return
    policy.covers("111122223333.dkr.ecr.eu-west-1.amazonaws.com/app")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab/*?.", min_size=1, max_size=8), st.text(alphabet="ab/.", max_size=10))
def test_star_never_matches_across_a_slash(pattern: str, name: str) -> None:
    # Without `**`, a pattern matches only names with the same number of slashes.
    if "**" not in pattern and policies.compile_glob(pattern).matches(name):
        assert name.count("/") == pattern.count("/")


def test_the_names_a_policy_remembers_matching_are_bounded_and_answered_alike() -> None:
    policy = policies.parse("p", 1, {"images": ["registry.example/team/**"]})
    for index in range(policies.COVERS_KEPT + 50):
        assert policy.covers(f"registry.example/team/app{index}")
    assert not policy.covers("registry.example/other/app")
    assert len(policy._covered) == policies.COVERS_KEPT
    # Past the bound and for long names the answer is worked out again, and the same.
    long_name = "registry.example/team/" + "a" * policies.COVERS_KEPT_LENGTH
    assert policy.covers(long_name)
    assert long_name not in policy._covered
