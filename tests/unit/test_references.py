"""The image reference grammar, Docker Hub normalisation, pinning, and ECR registry hosts."""

import hashlib
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from webhook import errors
from webhook.core import references

SHA256 = references.Digest("sha256:" + hashlib.sha256(b"manifest").hexdigest())
NEW_SHA256 = references.Digest("sha256:" + hashlib.sha256(b"another manifest").hexdigest())
SHA512 = references.Digest("sha512:" + hashlib.sha512(b"manifest").hexdigest())
SHA384 = references.Digest("sha384:" + hashlib.sha384(b"manifest").hexdigest())
ECR = "111122223333.dkr.ecr.eu-west-1.amazonaws.com"


def problem_of(image: str) -> str:
    with pytest.raises(errors.InvalidReference) as caught:
        references.parse(image)
    return caught.value.problem


# Docker Hub normalisation


def test_docker_hub_single_name_gets_library_prefix() -> None:
    ref = references.parse("nginx")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "docker.io",
        "library/nginx",
        None,
        None,
    )


def test_docker_hub_name_with_a_namespace_keeps_it() -> None:
    ref = references.parse("bitnami/redis:7.2")
    assert (ref.registry, ref.repository, ref.tag) == ("docker.io", "bitnami/redis", "7.2")


def test_index_docker_io_is_normalised_to_docker_io() -> None:
    ref = references.parse("index.docker.io/x/y")
    assert (ref.registry, ref.repository) == ("docker.io", "x/y")


def test_registry_1_docker_io_is_normalised_to_docker_io() -> None:
    ref = references.parse("registry-1.docker.io/x/y:v1")
    assert (ref.registry, ref.repository) == ("docker.io", "x/y")


def test_docker_io_with_a_single_name_gets_library_prefix() -> None:
    ref = references.parse("docker.io/nginx:1.25")
    assert (ref.registry, ref.repository) == ("docker.io", "library/nginx")


def test_index_docker_io_with_a_single_name_gets_library_prefix() -> None:
    assert references.parse("index.docker.io/nginx").repository == "library/nginx"


def test_first_component_without_dot_colon_or_uppercase_belongs_to_the_repository() -> None:
    ref = references.parse("team/app/web")
    assert (ref.registry, ref.repository) == ("docker.io", "team/app/web")


def test_name_is_registry_slash_repository() -> None:
    assert references.parse("nginx:1.25").name == "docker.io/library/nginx"


def test_original_spelling_is_kept() -> None:
    assert references.parse("nginx:1.25").original == "nginx:1.25"


# Registries


def test_registry_with_port_is_split_from_the_repository() -> None:
    ref = references.parse("registry.example.com:5000/team/app:v1")
    assert (ref.registry, ref.repository, ref.tag) == (
        "registry.example.com:5000",
        "team/app",
        "v1",
    )


def test_localhost_is_a_registry_even_without_a_dot_or_port() -> None:
    ref = references.parse("localhost/app")
    assert (ref.registry, ref.repository) == ("localhost", "app")


def test_localhost_with_port_and_no_tag_has_no_tag() -> None:
    ref = references.parse("localhost:5000/app")
    assert (ref.registry, ref.repository, ref.tag) == ("localhost:5000", "app", None)


def test_single_label_host_with_port_is_a_registry() -> None:
    ref = references.parse("registry:5000/app:v1")
    assert (ref.registry, ref.repository, ref.tag) == ("registry:5000", "app", "v1")


def test_uppercase_first_component_is_a_registry_host_compared_in_lowercase() -> None:
    ref = references.parse("MyRegistry/app")
    assert (ref.registry, ref.repository) == ("myregistry", "app")


def test_ecr_host_spelled_in_capitals_is_the_same_repository() -> None:
    upper = references.parse("123456789012.DKR.ECR.us-east-1.AMAZONAWS.COM/app:v1")
    lower = references.parse("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v1")
    assert upper.name == lower.name
    assert upper.pinned(references.Digest("sha256:" + "a" * 64), keep_tag=True).startswith(
        "123456789012.DKR.ECR.us-east-1.AMAZONAWS.COM/app:v1@"
    )


# Registry hosts in their one spelling


@pytest.mark.parametrize(
    "host",
    [
        pytest.param(f"{ECR}:443", id="https-port"),
        pytest.param(f"{ECR}:0443", id="https-port-with-a-leading-zero"),
        pytest.param(f"{ECR}.", id="trailing-dot"),
        pytest.param(f"{ECR}.:443", id="trailing-dot-and-https-port"),
        pytest.param(ECR.upper(), id="capitals"),
        pytest.param("111122223333.DKR.Ecr.EU-west-1.amazonaws.COM.:443", id="all-of-them"),
    ],
)
def test_every_spelling_of_an_ecr_host_is_the_canonical_registry(host: str) -> None:
    ref = references.parse(f"{host}/team/app:v1")
    assert ref.name == f"{ECR}/team/app"
    assert ref.ecr == references.parse_ecr_host(ECR)


@pytest.mark.parametrize(
    "host",
    [
        pytest.param(f"{ECR}:443", id="https-port"),
        pytest.param(f"{ECR}.", id="trailing-dot"),
        pytest.param(ECR.upper(), id="capitals"),
    ],
)
def test_parse_ecr_host_recognises_every_spelling_of_an_ecr_host(host: str) -> None:
    assert references.parse_ecr_host(host) == references.parse_ecr_host(ECR)


def test_https_port_is_dropped_from_any_registry() -> None:
    assert references.parse("registry.example.com:443/app").registry == "registry.example.com"


def test_trailing_dot_is_dropped_from_a_registry_host() -> None:
    ref = references.parse("registry.example.com./app:v1")
    assert (ref.registry, ref.repository, ref.tag) == ("registry.example.com", "app", "v1")


def test_trailing_dot_is_dropped_before_a_port() -> None:
    assert references.parse("registry.example.com.:5000/app").registry == (
        "registry.example.com:5000"
    )


def test_port_is_written_as_a_plain_number() -> None:
    assert references.parse("registry.example.com:05000/app").registry == (
        "registry.example.com:5000"
    )


def test_a_port_other_than_the_default_is_kept() -> None:
    assert references.parse("registry.example.com:8443/app").registry == (
        "registry.example.com:8443"
    )


def test_http_port_is_kept_for_a_registry_not_configured_as_plain_http() -> None:
    # HTTPS on port 80 is another endpoint than HTTPS on 443.
    assert references.parse("registry.example.com:80/app").registry == "registry.example.com:80"


def test_http_port_is_dropped_for_a_registry_configured_as_plain_http() -> None:
    plain = references.plain_http_hosts(["registry.example.com"])
    ref = references.parse("registry.example.com:80/app", plain_http=plain)
    assert ref.registry == "registry.example.com"


def test_https_port_is_kept_for_a_registry_configured_as_plain_http() -> None:
    plain = references.plain_http_hosts(["registry.example.com"])
    ref = references.parse("registry.example.com:443/app", plain_http=plain)
    assert ref.registry == "registry.example.com:443"


def test_plain_http_on_port_443_keeps_the_port() -> None:
    plain = references.plain_http_hosts(["registry.example.com:443"])
    ref = references.parse("registry.example.com:443/app", plain_http=plain)
    assert ref.registry == "registry.example.com:443"


def test_plain_http_hosts_are_made_canonical() -> None:
    entries = ["Registry.Example.com.:80", " mirror.local ", "cache:5000", "[::1]:80"]
    assert references.plain_http_hosts(entries) == {
        "registry.example.com",
        "mirror.local",
        "cache:5000",
        "[::1]",
    }


@pytest.mark.parametrize("entry", ["http://registry.example.com", "registry/path", "", "h:99999"])
def test_plain_http_entry_that_is_not_a_host_is_a_configuration_error(entry: str) -> None:
    with pytest.raises(errors.ConfigurationError):
        references.plain_http_hosts([entry])


@pytest.mark.parametrize(
    "image", ["Docker.IO/nginx", "docker.io:443/nginx", "index.docker.io./nginx", "nginx"]
)
def test_every_spelling_of_docker_hub_is_docker_io(image: str) -> None:
    assert references.parse(image).name == "docker.io/library/nginx"


def test_ipv6_registry_has_its_https_port_dropped_and_is_lowercased() -> None:
    assert references.parse("[2001:DB8::1]:443/app").registry == "[2001:db8::1]"


def test_registry_port_above_65535_is_refused() -> None:
    assert problem_of("registry.example.com:65536/app") == "the registry port is above 65535"


def test_two_trailing_dots_are_refused() -> None:
    assert "is not a valid host[:port]" in problem_of("registry.example.com../app")


def test_trailing_dot_on_an_ipv6_literal_is_refused() -> None:
    assert "is not a valid host[:port]" in problem_of("[::1]./app")


@pytest.mark.parametrize("keep_tag", [True, False])
def test_pinned_keeps_the_spelling_of_the_host_as_written(keep_tag: bool) -> None:
    written = "111122223333.DKR.ecr.eu-west-1.amazonaws.com.:443/team/app"
    pinned = references.parse(f"{written}:v1").pinned(SHA256, keep_tag=keep_tag)
    assert pinned == (f"{written}:v1@{SHA256}" if keep_tag else f"{written}@{SHA256}")


def test_ipv6_registry_in_brackets_with_port() -> None:
    ref = references.parse("[::1]:5000/app:v1")
    assert (ref.registry, ref.repository, ref.tag) == ("[::1]:5000", "app", "v1")


def test_ipv6_registry_in_brackets_without_port() -> None:
    ref = references.parse("[2001:db8::1]/team/app")
    assert (ref.registry, ref.repository, ref.tag) == ("[2001:db8::1]", "team/app", None)


def test_registry_is_not_given_a_library_prefix() -> None:
    assert references.parse(f"{ECR}/app:v1").repository == "app"


def test_nested_repositories_are_kept_whole() -> None:
    ref = references.parse(f"{ECR}/platform/team/service/api:v1")
    assert (ref.registry, ref.repository) == (ECR, "platform/team/service/api")


def test_registry_host_starting_with_a_dash_is_refused() -> None:
    assert problem_of("-bad.example.com/app") == (
        "registry host '-bad.example.com' is not a valid host[:port]"
    )


def test_registry_port_that_is_not_a_number_is_refused() -> None:
    assert problem_of("example.com:http/app") == (
        "registry host 'example.com:http' is not a valid host[:port]"
    )


def test_registry_with_an_empty_port_is_refused() -> None:
    assert "registry host 'example.com:'" in problem_of("example.com:/app")


# Repository path components


def test_path_components_accept_every_separator() -> None:
    assert references.parse(f"{ECR}/a.b_c__d-e---f/g").repository == "a.b_c__d-e---f/g"


def test_uppercase_repository_is_refused_naming_the_component() -> None:
    assert problem_of(f"{ECR}/Shop/api:v1") == (
        "repository path component 'Shop' must be lowercase letters and digits,"
        " separated by '.', '_', '__' or '-'"
    )


def test_uppercase_single_name_is_refused() -> None:
    assert "'Nginx'" in problem_of("Nginx")


@pytest.mark.parametrize("component", ["-app", "app-", ".app", "app.", "a..b", "a___b", "a_.b"])
def test_path_component_with_misplaced_separators_is_refused(component: str) -> None:
    assert f"repository path component {component!r}" in problem_of(f"{ECR}/{component}")


def test_empty_path_component_is_refused() -> None:
    assert problem_of(f"{ECR}/team//app") == "the repository name has an empty path component"


def test_trailing_slash_is_refused() -> None:
    assert problem_of("team/app/") == "the repository name has an empty path component"


def test_registry_without_repository_is_refused() -> None:
    assert problem_of(f"{ECR}/") == "the repository name is empty"


def test_digest_without_name_is_refused() -> None:
    assert problem_of(f"@{SHA256}") == "the repository name is empty"


# Tags


def test_tag_is_split_from_the_last_component() -> None:
    ref = references.parse(f"{ECR}/team/app:v1.2.3-rc_1")
    assert (ref.repository, ref.tag) == ("team/app", "v1.2.3-rc_1")


def test_tag_may_be_uppercase_and_start_with_underscore() -> None:
    assert references.parse("app:_Release-A").tag == "_Release-A"


def test_tag_of_128_characters_is_accepted() -> None:
    tag = "v" * 128
    assert references.parse(f"app:{tag}").tag == tag


def test_tag_of_129_characters_is_refused() -> None:
    assert problem_of(f"app:{'v' * 129}").startswith(f"tag {'v' * 129!r} must be 1-128 characters")


def test_tag_starting_with_a_dot_is_refused() -> None:
    assert problem_of("app:.v1") == (
        "tag '.v1' must be 1-128 characters of letters, digits, '_', '.' or '-',"
        " not starting with '.' or '-'"
    )


def test_tag_starting_with_a_dash_is_refused() -> None:
    assert problem_of("app:-v1").startswith("tag '-v1' must be")


@pytest.mark.parametrize("tag", ["v1+build", "v1~x", "v1:2", "vé", "v\u0661"])
def test_tag_with_a_character_outside_the_grammar_is_refused(tag: str) -> None:
    assert problem_of(f"app:{tag}").startswith(f"tag {tag!r} must be")


def test_slash_after_a_tag_makes_the_first_component_a_host_with_a_bad_port() -> None:
    assert problem_of("app:v1/x") == "registry host 'app:v1' is not a valid host[:port]"


def test_colon_without_tag_is_refused() -> None:
    assert problem_of("app:") == "':' is not followed by a tag"


def test_colon_without_tag_before_digest_is_refused() -> None:
    assert problem_of(f"app:@{SHA256}") == "':' is not followed by a tag"


# Digests


def test_digest_only_reference_has_no_tag() -> None:
    ref = references.parse(f"{ECR}/app@{SHA256}")
    assert (ref.repository, ref.tag, ref.digest) == ("app", None, SHA256)


def test_tag_and_digest_are_both_kept() -> None:
    ref = references.parse(f"{ECR}/app:v1@{SHA256}")
    assert (ref.repository, ref.tag, ref.digest) == ("app", "v1", SHA256)


def test_sha512_digest_is_accepted() -> None:
    assert references.parse(f"app@{SHA512}").digest == SHA512


def test_sha384_digest_is_accepted() -> None:
    assert references.parse(f"app@{SHA384}").digest == SHA384


def test_unknown_algorithm_is_accepted_per_grammar() -> None:
    digest = "multihash+base58:" + "0123456789ABCDEFabcdef0123456789"
    assert references.parse(f"app@{digest}").digest == digest


def test_digest_with_fewer_than_32_hex_digits_is_refused() -> None:
    assert problem_of("app@sha256:abc123") == (
        "digest 'sha256:abc123' is not 'algorithm:hex' with at least 32 hex digits"
    )


def test_sha256_digest_with_uppercase_hex_is_refused() -> None:
    assert problem_of(f"app@{SHA256.upper().replace('SHA256', 'sha256')}") == (
        "a sha256 digest must be lowercase hex"
    )


def test_sha256_digest_of_the_wrong_length_is_refused() -> None:
    assert problem_of(f"app@sha256:{'a' * 63}") == "a sha256 digest has 64 hex digits, not 63"


def test_sha256_digest_one_digit_too_long_is_refused() -> None:
    assert problem_of(f"app@sha256:{'a' * 65}") == "a sha256 digest has 64 hex digits, not 65"


def test_sha512_digest_of_sha256_length_is_refused() -> None:
    assert problem_of(f"app@sha512:{'a' * 64}") == "a sha512 digest has 128 hex digits, not 64"


def test_digest_with_non_hex_digits_is_refused() -> None:
    assert "is not 'algorithm:hex'" in problem_of(f"app@sha256:{'g' * 64}")


def test_digest_without_algorithm_is_refused() -> None:
    assert "is not 'algorithm:hex'" in problem_of(f"app@:{'a' * 64}")


def test_digest_without_colon_is_refused() -> None:
    assert "is not 'algorithm:hex'" in problem_of(f"app@sha256{'a' * 64}")


def test_at_without_digest_is_refused() -> None:
    assert problem_of("app:v1@") == "'@' is not followed by a digest"


def test_more_than_one_at_is_refused() -> None:
    assert problem_of(f"app@{SHA256}@{SHA256}") == "more than one '@'"


# Whole-string checks


def test_empty_reference_is_refused() -> None:
    assert problem_of("") == "the reference is empty"


@pytest.mark.parametrize("image", [" app", "app ", "app\n", "\tapp:v1"])
def test_leading_or_trailing_whitespace_is_refused(image: str) -> None:
    assert problem_of(image) == "leading or trailing whitespace"


@pytest.mark.parametrize("image", ["app :v1", "team/ app", "app:v\u00a01"])
def test_whitespace_inside_the_reference_is_refused(image: str) -> None:
    assert problem_of(image) == "whitespace inside the reference"


def test_whitespace_only_reference_is_refused() -> None:
    assert problem_of("   ") == "leading or trailing whitespace"


def test_name_of_255_characters_is_accepted() -> None:
    name = f"{ECR}/{'a' * (255 - len(ECR) - 1)}"
    assert references.parse(f"{name}:v1@{SHA256}").name == name


def test_name_of_256_characters_is_refused() -> None:
    name = f"{ECR}/{'a' * (256 - len(ECR) - 1)}"
    assert problem_of(name) == "the name is 256 characters long (at most 255)"


def test_name_length_is_counted_as_written_not_as_normalised() -> None:
    name = "a" * 255
    assert references.parse(name).repository == f"library/{name}"


def test_error_carries_the_image_and_says_what_is_wrong() -> None:
    with pytest.raises(errors.InvalidReference) as caught:
        references.parse("app:")
    assert caught.value.image == "app:"
    assert str(caught.value) == "invalid image reference 'app:': ':' is not followed by a tag"


def test_invalid_reference_is_a_digestguard_error() -> None:
    with pytest.raises(errors.DigestguardError):
        references.parse("")


# pinned()


def test_pinned_keeps_the_original_spelling_and_the_tag() -> None:
    assert references.parse("nginx:1.25").pinned(SHA256, keep_tag=True) == f"nginx:1.25@{SHA256}"


def test_pinned_without_keep_tag_drops_the_tag() -> None:
    assert references.parse("nginx:1.25").pinned(SHA256, keep_tag=False) == f"nginx@{SHA256}"


def test_pinned_keeps_a_docker_hub_alias_as_written() -> None:
    ref = references.parse("index.docker.io/x/y:v1")
    assert ref.pinned(SHA256, keep_tag=True) == f"index.docker.io/x/y:v1@{SHA256}"


@pytest.mark.parametrize("keep_tag", [True, False])
def test_pinned_reference_without_tag_gets_only_a_digest(keep_tag: bool) -> None:
    ref = references.parse(f"{ECR}/app")
    assert ref.pinned(SHA256, keep_tag=keep_tag) == f"{ECR}/app@{SHA256}"


@pytest.mark.parametrize("keep_tag", [True, False])
def test_pinned_registry_port_is_not_mistaken_for_a_tag(keep_tag: bool) -> None:
    ref = references.parse("localhost:5000/app")
    assert ref.pinned(SHA256, keep_tag=keep_tag) == f"localhost:5000/app@{SHA256}"


def test_pinned_registry_port_and_tag_keeps_both() -> None:
    ref = references.parse("localhost:5000/app:v1")
    assert ref.pinned(SHA256, keep_tag=True) == f"localhost:5000/app:v1@{SHA256}"


def test_pinned_registry_port_and_tag_without_keep_tag_keeps_the_port() -> None:
    ref = references.parse("localhost:5000/app:v1")
    assert ref.pinned(SHA256, keep_tag=False) == f"localhost:5000/app@{SHA256}"


def test_pinned_ipv6_registry_without_tag_keeps_the_host() -> None:
    ref = references.parse("[::1]:5000/app")
    assert ref.pinned(SHA256, keep_tag=True) == f"[::1]:5000/app@{SHA256}"


def test_pinned_replaces_the_digest_of_a_tag_and_digest_reference() -> None:
    ref = references.parse(f"{ECR}/app:v1@{SHA256}")
    assert ref.pinned(NEW_SHA256, keep_tag=True) == f"{ECR}/app:v1@{NEW_SHA256}"


def test_pinned_replaces_the_digest_and_drops_the_tag_without_keep_tag() -> None:
    ref = references.parse(f"{ECR}/app:v1@{SHA256}")
    assert ref.pinned(NEW_SHA256, keep_tag=False) == f"{ECR}/app@{NEW_SHA256}"


def test_pinned_replaces_the_digest_of_a_digest_only_reference() -> None:
    ref = references.parse(f"{ECR}/app@{SHA256}")
    assert ref.pinned(NEW_SHA256, keep_tag=True) == f"{ECR}/app@{NEW_SHA256}"


# ECR registry hosts


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param(
            "111122223333.dkr.ecr.eu-west-1.amazonaws.com",
            references.EcrRegistry("111122223333", "eu-west-1", "aws", False, False),
            id="standard",
        ),
        pytest.param(
            "111122223333.dkr.ecr-fips.us-east-1.amazonaws.com",
            references.EcrRegistry("111122223333", "us-east-1", "aws", True, False),
            id="fips",
        ),
        pytest.param(
            "111122223333.dkr-ecr.eu-west-1.on.aws",
            references.EcrRegistry("111122223333", "eu-west-1", "aws", False, True),
            id="dual-stack",
        ),
        pytest.param(
            "111122223333.dkr-ecr-fips.us-east-2.on.aws",
            references.EcrRegistry("111122223333", "us-east-2", "aws", True, True),
            id="dual-stack-fips",
        ),
        pytest.param(
            "111122223333.dkr.ecr.cn-north-1.amazonaws.com.cn",
            references.EcrRegistry("111122223333", "cn-north-1", "aws-cn", False, False),
            id="china",
        ),
        pytest.param(
            "111122223333.dkr-ecr.cn-northwest-1.on.amazonwebservices.com.cn",
            references.EcrRegistry("111122223333", "cn-northwest-1", "aws-cn", False, True),
            id="china-dual-stack",
        ),
        pytest.param(
            "111122223333.dkr.ecr.us-gov-west-1.amazonaws.com",
            references.EcrRegistry("111122223333", "us-gov-west-1", "aws-us-gov", False, False),
            id="govcloud",
        ),
        pytest.param(
            "111122223333.dkr.ecr-fips.us-gov-east-1.amazonaws.com",
            references.EcrRegistry("111122223333", "us-gov-east-1", "aws-us-gov", True, False),
            id="govcloud-fips",
        ),
        pytest.param(
            "111122223333.dkr-ecr.us-gov-west-1.on.aws",
            references.EcrRegistry("111122223333", "us-gov-west-1", "aws-us-gov", False, True),
            id="govcloud-dual-stack",
        ),
        pytest.param(
            "111122223333.dkr.ecr.us-iso-east-1.c2s.ic.gov",
            references.EcrRegistry("111122223333", "us-iso-east-1", "aws-iso", False, False),
            id="iso",
        ),
        pytest.param(
            "111122223333.dkr.ecr.us-isob-east-1.sc2s.sgov.gov",
            references.EcrRegistry("111122223333", "us-isob-east-1", "aws-iso-b", False, False),
            id="iso-b",
        ),
        pytest.param(
            "111122223333.dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk",
            references.EcrRegistry("111122223333", "eu-isoe-west-1", "aws-iso-e", False, False),
            id="iso-e",
        ),
        pytest.param(
            "111122223333.dkr.ecr.us-isof-south-1.csp.hci.ic.gov",
            references.EcrRegistry("111122223333", "us-isof-south-1", "aws-iso-f", False, False),
            id="iso-f",
        ),
        pytest.param(
            "111122223333.DKR.ECR.EU-WEST-1.AMAZONAWS.COM",
            references.EcrRegistry("111122223333", "eu-west-1", "aws", False, False),
            id="uppercase",
        ),
    ],
)
def test_ecr_host_forms_name_account_region_and_partition(
    host: str, expected: references.EcrRegistry
) -> None:
    assert references.parse_ecr_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("public.ecr.aws", id="ecr-public"),
        pytest.param("docker.io", id="docker-hub"),
        pytest.param("ghcr.io", id="ghcr"),
        pytest.param("11112222333.dkr.ecr.eu-west-1.amazonaws.com", id="11-digit-account"),
        pytest.param("1111222233334.dkr.ecr.eu-west-1.amazonaws.com", id="13-digit-account"),
        pytest.param("my-account.dkr.ecr.eu-west-1.amazonaws.com", id="named-account"),
        pytest.param("111122223333.dkr-ecr.eu-west-1.amazonaws.com", id="dual-stack-dash-on-ipv4"),
        pytest.param("111122223333.dkr.ecr.eu-west-1.on.aws", id="ipv4-dot-on-dual-stack"),
        pytest.param("111122223333.dkr.ecr.cn-north-1.amazonaws.com", id="china-region-commercial"),
        pytest.param("111122223333.dkr.ecr.eu-west-1.amazonaws.com.cn", id="commercial-on-china"),
        pytest.param("111122223333.dkr-ecr.eu-west-1.on.amazonwebservices.com.cn", id="cn-ds"),
        pytest.param("111122223333.dkr.ecr.us-iso-east-1.amazonaws.com", id="iso-region-on-aws"),
        pytest.param("111122223333.dkr.ecr.us-east-1.c2s.ic.gov", id="commercial-on-iso"),
        pytest.param("111122223333.dkr.ecr.us-isob-east-1.c2s.ic.gov", id="iso-b-on-iso"),
        pytest.param("111122223333.dkr.ecr.us-gov-west-1.amazonaws.com.cn", id="gov-on-china"),
        pytest.param("111122223333.dkr.ecr.eu-west-1.amazonaws.com:8443", id="other-port"),
        pytest.param("111122223333.dkr.ecr.eu-west-1.amazonaws.com:80", id="http-port"),
        pytest.param("111122223333.dkr.ecr.eu-west-1.amazonaws.com..", id="two-trailing-dots"),
        pytest.param("111122223333.dkr.ecr.eu-west-1.amazonaws.com.evil.io", id="suffixed"),
        pytest.param("x111122223333.dkr.ecr.eu-west-1.amazonaws.com", id="prefixed"),
        pytest.param("111122223333.dkr.ecr.amazonaws.com", id="no-region"),
        pytest.param("api.ecr.eu-west-1.amazonaws.com", id="api-endpoint"),
        pytest.param("111122223333.ecr.eu-west-1.amazonaws.com", id="no-dkr"),
    ],
)
def test_non_ecr_hosts_are_not_ecr_registries(host: str) -> None:
    assert references.parse_ecr_host(host) is None


def test_reference_names_its_ecr_registry() -> None:
    ecr = references.parse(f"{ECR}/team/app:v1").ecr
    assert ecr is not None
    assert (ecr.account, ecr.region) == ("111122223333", "eu-west-1")


def test_docker_hub_reference_has_no_ecr_registry() -> None:
    assert references.parse("nginx").ecr is None


# Properties over the whole grammar

_LOWER_ALNUM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_SEPARATOR = st.sampled_from([".", "_", "__", "-", "--", "---"])
_PATH_COMPONENT = st.builds(
    lambda first, rest: first + "".join(sep + alnum for sep, alnum in rest),
    _LOWER_ALNUM,
    st.lists(st.tuples(_SEPARATOR, _LOWER_ALNUM), max_size=2),
)
_PATH = st.lists(_PATH_COMPONENT, min_size=1, max_size=4).map("/".join)
_DOMAIN_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_DOMAIN_COMPONENT = st.one_of(
    st.text(alphabet=_DOMAIN_ALNUM, min_size=1, max_size=1),
    st.builds(
        lambda a, middle, b: a + middle + b,
        st.text(alphabet=_DOMAIN_ALNUM, min_size=1, max_size=1),
        st.text(alphabet=_DOMAIN_ALNUM + "-", max_size=8),
        st.text(alphabet=_DOMAIN_ALNUM, min_size=1, max_size=1),
    ),
)
_PORT = st.integers(min_value=0, max_value=65535).map(lambda port: f":{port}")
_IPV6 = st.lists(st.text(alphabet="0123456789abcdefABCDEF", max_size=4), min_size=3, max_size=8)
_REGISTRY = st.one_of(
    st.builds(
        lambda parts, port: ".".join(parts) + port,
        st.lists(_DOMAIN_COMPONENT, min_size=2, max_size=4),
        st.one_of(st.just(""), _PORT),
    ),
    st.builds(lambda host, port: host + port, _DOMAIN_COMPONENT, _PORT),
    st.builds(lambda port: "localhost" + port, st.one_of(st.just(""), _PORT)),
    st.builds(
        lambda groups, port: "[" + ":".join(groups) + "]" + port,
        _IPV6,
        st.one_of(st.just(""), _PORT),
    ),
)
_TAG = st.builds(
    lambda first, rest: first + rest,
    st.text(alphabet=_DOMAIN_ALNUM + "_", min_size=1, max_size=1),
    st.text(alphabet=_DOMAIN_ALNUM + "_.-", max_size=127),
)
_HEX = "0123456789abcdef"
_DIGEST = st.one_of(
    st.text(alphabet=_HEX, min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.text(alphabet=_HEX, min_size=128, max_size=128).map(lambda h: f"sha512:{h}"),
    st.text(alphabet=_HEX + "ABCDEF", min_size=32, max_size=80).map(lambda h: f"blake3:{h}"),
)
_DOCKER_HUB_SPELLINGS = {"docker.io", "index.docker.io", "registry-1.docker.io"}


@settings(max_examples=400, deadline=None)
@given(
    registry=st.one_of(st.none(), _REGISTRY),
    path=_PATH,
    tag=st.one_of(st.none(), _TAG),
    digest=st.one_of(st.none(), _DIGEST),
    new_digest=_DIGEST,
    keep_tag=st.booleans(),
)
def test_every_reference_built_from_the_grammar_parses_back_into_its_parts(
    registry: str | None,
    path: str,
    tag: str | None,
    digest: str | None,
    new_digest: str,
    keep_tag: bool,
) -> None:
    first = path.split("/", 1)[0]
    if registry is None:
        # Without a registry, a first component that looks like a host is one.
        assume("/" not in path or ("." not in first and first != "localhost"))
    else:
        assume(registry.lower() not in _DOCKER_HUB_SPELLINGS)
    name = f"{registry}/{path}" if registry is not None else path
    assume(len(name) <= references.NAME_MAX_LENGTH)
    image = name + (f":{tag}" if tag is not None else "") + (f"@{digest}" if digest else "")

    ref = references.parse(image)

    expected_registry = (
        registry.lower().removesuffix(":443") if registry is not None else "docker.io"
    )
    expected_repository = path if registry is not None or "/" in path else f"library/{path}"
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        expected_registry,
        expected_repository,
        tag,
        digest,
    )
    pinned = ref.pinned(references.Digest(new_digest), keep_tag=keep_tag)
    assert pinned.startswith(name)
    again = references.parse(pinned)
    assert (again.registry, again.repository, again.digest) == (
        ref.registry,
        ref.repository,
        new_digest,
    )
    assert again.tag == (tag if keep_tag else None)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="aZ09:/@._-[]+ \tsha256localhost", max_size=40),
    )
)
def test_arbitrary_text_never_raises_anything_but_invalid_reference(text: str) -> None:
    try:
        ref = references.parse(text)
    except errors.InvalidReference:
        return
    ref.pinned(SHA256, keep_tag=True)
    assert ref.ecr is None or ref.ecr.account.isdigit()


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_host_text_is_either_ecr_or_none(text: str) -> None:
    result = references.parse_ecr_host(text)
    assert result is None or isinstance(result, references.EcrRegistry)


@pytest.mark.parametrize(
    "space", [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()], ids=ord
)
def test_every_unicode_whitespace_inside_a_reference_is_refused(space: str) -> None:
    with pytest.raises(errors.InvalidReference, match="whitespace inside"):
        references.parse(f"registry.example/team/app{space}x:v1")


def test_a_reference_parsed_again_is_the_same_value_and_a_huge_one_is_not_kept() -> None:
    image = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/team/app:v1"
    assert references.parse(image) is references.parse(image)
    kept = references._parse_kept.cache_info().currsize
    huge = "registry.example/app:" + "v" * 1_000_000
    for _ in range(2):
        with pytest.raises(errors.InvalidReference):
            references.parse(huge)
    assert references._parse_kept.cache_info().currsize == kept
