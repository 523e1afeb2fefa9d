"""The glob matcher agrees with the regex a glob means, and takes bounded time on any input.

The reference below is the definition of a glob (`**` is `.*`, `*` is `[^/]*`, `?` is
`[^/]`, compared as `re.IGNORECASE` compares) run by Python's backtracking regex engine.
The matcher must give its answer on every pattern and name, without the engine's
exponential cases.
"""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.support import glob_regex
from webhook import errors
from webhook.core import policies, references

ECR = "111122223333.dkr.ecr.us-east-1.amazonaws.com"


def reference(written: str, name: str) -> bool:
    # The host of a glob is first spelled as references spell it (see the test below).
    pattern = policies.compile_glob(written).pattern
    return glob_regex.regex_of(pattern).fullmatch(name) is not None


def matches(pattern: str, name: str) -> bool:
    return policies.compile_glob(pattern).matches(name)


# Few letters, so that wildcards and literals line up often enough to matter.
PATTERN = st.text(alphabet="ab/*?.-", min_size=1, max_size=14)
NAME = st.text(alphabet="ab/.-", max_size=16)


@settings(max_examples=3000, deadline=None)
@given(PATTERN, NAME)
@example("**a/b**", "xa/by")
@example("a/**/b", "a//b")
@example("a/**/b", "a/b")
@example("*a*a*a", "aaa")
@example("**/", "/")
@example("?**?", "a/a")
@example("a*/**b", "a/b")
def test_the_matcher_agrees_with_the_regex_a_glob_means(pattern: str, name: str) -> None:
    assert matches(pattern, name) == reference(pattern, name)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "/", "*", "**", "?", "ab"]), min_size=1, max_size=9))
def test_the_matcher_agrees_on_names_made_from_the_pattern(tokens: list[str]) -> None:
    # Names the pattern nearly matches: each wildcard replaced by a few plausible texts.
    pattern = "".join(tokens)
    fillings = {"*": ["", "a", "ab"], "**": ["", "a/b", "/"], "?": ["a", "/"]}
    names = [""]
    for token in tokens:
        names = [head + fill for head in names for fill in fillings.get(token, [token])][:64]
    for name in names:
        assert matches(pattern, name) == reference(pattern, name), (pattern, name)


# Characters `re.IGNORECASE` folds beyond ASCII: the Kelvin sign, the long s, dotted and
# dotless i, the Greek sigmas and the micro sign.
UNICODE_PATTERN = st.text(
    alphabet="kKsSiI\u212a\u017f\u0130\u0131\u03c3\u03c2\u03a3\u00b5\u03bc*?/",
    min_size=1,
    max_size=8,
)
UNICODE_NAME = st.text(
    alphabet="kKsSiI\u212a\u017f\u0130\u0131\u03c3\u03c2\u03a3\u00b5\u03bc/", max_size=8
)


@settings(max_examples=1500, deadline=None)
@given(UNICODE_PATTERN, UNICODE_NAME)
def test_case_folding_is_the_one_re_ignorecase_applies(pattern: str, name: str) -> None:
    assert matches(pattern, name) == reference(pattern, name)


@settings(max_examples=300, deadline=None)
@given(st.lists(PATTERN, min_size=1, max_size=12), NAME)
def test_a_policy_covers_a_name_exactly_when_one_of_its_globs_matches(
    globs: list[str], name: str
) -> None:
    policy = policies.parse("pin", 1, {"images": globs})
    assert policy.covers(name) == any(reference(glob, name) for glob in globs)


def test_many_wildcards_against_a_long_name_that_misses_answer() -> None:
    # The backtracking engine needs about C(200, 30) steps for this; the matcher is linear
    # in each piece, so the test ends (a regression hangs it rather than failing it).
    pattern = "*a" * 30 + "b"
    assert not matches(pattern, "a" * 200)
    assert not matches("**a" * 30 + "b", "a" * 200)
    assert not matches("?*" * 40 + "b", "a" * 200)


def test_the_plausible_production_glob_matches_a_long_valid_name() -> None:
    pattern = "*.dkr.ecr.*.amazonaws.com/*-*-*-*-*/**"
    name = f"{ECR}/{'team-' * 20}x/{'a-b-c/' * 15}svc"
    assert len(name) > 190
    assert matches(pattern, name) == reference(pattern, name) is True
    assert not matches(pattern, f"{ECR}/{'t' * 150}/svc")


def test_a_policy_of_twenty_thousand_globs_covers_by_prefix() -> None:
    globs = [f"{ECR}/team-{index}/**" for index in range(policies.GLOBS_MAX_ITEMS)]
    policy = policies.parse("many", 1, {"images": globs})
    assert policy.covers(f"{ECR}/team-19999/svc")
    assert not policy.covers(f"{ECR}/team-20000/svc")


def test_more_globs_than_the_limit_are_refused_with_the_field_named() -> None:
    globs = [f"{ECR}/r{index}" for index in range(policies.GLOBS_MAX_ITEMS + 1)]
    with pytest.raises(errors.InvalidPolicy) as raised:
        policies.parse("many", 1, {"excludeImages": globs, "images": ["**"]})
    assert str(raised.value).startswith("spec.excludeImages: 20001 globs is more than 20000")


def test_an_overlong_glob_is_refused_and_not_echoed_whole() -> None:
    with pytest.raises(errors.InvalidPolicy) as raised:
        policies.compile_glob("a" * 5000)
    assert "5000 characters long (at most 1024)" in str(raised.value)
    assert len(str(raised.value)) < 200


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("registry.example.com:443/**", "registry.example.com/**"),
        ("registry.example.com.:443/team/*", "registry.example.com/team/*"),
        ("registry.example.com.:0443/app", "registry.example.com/app"),
        ("*.dkr.ecr.*.amazonaws.com:443/**", "*.dkr.ecr.*.amazonaws.com/**"),
        ("*.dkr.ecr.*.amazonaws.com./**", "*.dkr.ecr.*.amazonaws.com/**"),
        ("[::1]:443/app", "[::1]/app"),
        ("localhost:5000/app", "localhost:5000/app"),
        ("registry.example.com:*/app", "registry.example.com:*/app"),
        ("library/nginx", "library/nginx"),
    ],
)
def test_a_glob_host_is_spelled_as_references_spell_it(written: str, canonical: str) -> None:
    assert policies.compile_glob(written).pattern == canonical


def test_a_glob_written_with_the_default_port_covers_every_spelling_of_the_host() -> None:
    policy = policies.parse("pin", 1, {"images": [f"{ECR}:443/**"]})
    for spelling in (f"{ECR}", f"{ECR}:443", f"{ECR}.", f"{ECR.upper()}.:443"):
        image = f"{spelling}/repo:v1"
        assert policy.covers(references.parse(image).name), image
