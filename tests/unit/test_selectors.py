"""LabelSelectors: parsing with errors that name the field, and the apiserver's matching."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import errors
from webhook.core import selectors

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
EXPRESSION = st.dictionaries(st.sampled_from(["key", "operator", "values"]), JSON, max_size=3)


def parse(raw: Any) -> selectors.LabelSelector:
    return selectors.parse(raw, "podSelector")


def message_of(raw: Any, field: str = "podSelector") -> str:
    with pytest.raises(errors.InvalidPolicy) as caught:
        selectors.parse(raw, field)
    return str(caught.value)


def expression(operator: str, *values: str, key: str = "env") -> dict[str, Any]:
    raw: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        raw["values"] = list(values)
    return {"matchExpressions": [raw]}


# Matching


def test_absent_selector_matches_everything() -> None:
    assert parse(None).matches({})


def test_empty_selector_matches_everything() -> None:
    assert parse({}).matches({"any": "thing"})


def test_null_fields_are_absent_fields() -> None:
    assert parse({"matchLabels": None, "matchExpressions": None}).matches({})


def test_match_labels_match_when_every_label_is_equal() -> None:
    selector = parse({"matchLabels": {"env": "prod", "team": "a"}})
    assert selector.matches({"env": "prod", "team": "a", "extra": "x"})


def test_match_labels_do_not_match_a_different_value() -> None:
    assert not parse({"matchLabels": {"env": "prod"}}).matches({"env": "dev"})


def test_match_labels_do_not_match_a_missing_label() -> None:
    assert not parse({"matchLabels": {"env": "prod", "team": "a"}}).matches({"env": "prod"})


def test_in_matches_one_of_its_values() -> None:
    assert parse(expression("In", "prod", "staging")).matches({"env": "staging"})


def test_in_does_not_match_a_missing_label() -> None:
    assert not parse(expression("In", "prod")).matches({})


def test_in_does_not_match_another_value() -> None:
    assert not parse(expression("In", "prod")).matches({"env": "dev"})


def test_not_in_matches_a_missing_label() -> None:
    assert parse(expression("NotIn", "prod")).matches({})


def test_not_in_matches_another_value() -> None:
    assert parse(expression("NotIn", "prod")).matches({"env": "dev"})


def test_not_in_does_not_match_one_of_its_values() -> None:
    assert not parse(expression("NotIn", "prod", "staging")).matches({"env": "prod"})


def test_exists_matches_any_value_of_the_key() -> None:
    assert parse(expression("Exists")).matches({"env": ""})


def test_exists_does_not_match_a_missing_key() -> None:
    assert not parse(expression("Exists")).matches({"team": "a"})


def test_does_not_exist_matches_a_missing_key() -> None:
    assert parse(expression("DoesNotExist")).matches({"team": "a"})


def test_does_not_exist_does_not_match_a_present_key() -> None:
    assert not parse(expression("DoesNotExist")).matches({"env": "prod"})


def test_labels_and_expressions_must_all_match() -> None:
    selector = parse(
        {
            "matchLabels": {"team": "a"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}],
        }
    )
    assert selector.matches({"team": "a", "env": "prod"})
    assert not selector.matches({"team": "a", "env": "dev"})
    assert not selector.matches({"team": "b", "env": "prod"})


def test_match_labels_become_in_requirements() -> None:
    assert parse({"matchLabels": {"env": "prod"}}).requirements == (
        selectors.Requirement("env", "In", frozenset({"prod"})),
    )


# Errors name the field


def test_selector_that_is_not_an_object_is_refused() -> None:
    assert message_of(["env"]) == "spec.podSelector: must be a label selector object"


def test_error_names_the_field_it_was_given() -> None:
    assert message_of("all", "namespaceSelector") == (
        "spec.namespaceSelector: must be a label selector object"
    )


@pytest.mark.parametrize("labels", [["env", "prod"], "env=prod", 0, False])
def test_match_labels_that_are_not_a_map_are_refused(labels: Any) -> None:
    assert message_of({"matchLabels": labels}) == (
        "spec.podSelector.matchLabels: must be a map of strings"
    )


def test_match_label_value_that_is_not_a_string_is_refused() -> None:
    assert message_of({"matchLabels": {"tier": 1}}) == (
        "spec.podSelector.matchLabels.tier: must be a string"
    )


@pytest.mark.parametrize("expressions", [{"key": "env"}, "env In prod", 0, ""])
def test_match_expressions_that_are_not_a_list_are_refused(expressions: Any) -> None:
    assert message_of({"matchExpressions": expressions}) == (
        "spec.podSelector.matchExpressions: must be a list"
    )


@pytest.mark.parametrize("item", ["env", {"operator": "Exists"}, {"key": 3, "operator": "Exists"}])
def test_expression_without_a_string_key_is_refused(item: Any) -> None:
    assert message_of({"matchExpressions": [item]}) == (
        "spec.podSelector.matchExpressions[0]: must have a string 'key'"
    )


@pytest.mark.parametrize("operator", ["in", "Equals", "", None, "!=", ["In"], {"In": 1}])
def test_unknown_operator_is_refused_naming_the_expression(operator: Any) -> None:
    raw = {
        "matchExpressions": [
            {"key": "a", "operator": "Exists"},
            {"key": "env", "operator": operator, "values": ["prod"]},
        ]
    }
    assert message_of(raw, "namespaceSelector") == (
        "spec.namespaceSelector.matchExpressions[1].operator:"
        " must be one of DoesNotExist, Exists, In, NotIn"
    )


@pytest.mark.parametrize("values", ["prod", ["prod", 1], {"prod": True}, 0])
def test_values_that_are_not_a_list_of_strings_are_refused(values: Any) -> None:
    raw = {"matchExpressions": [{"key": "env", "operator": "In", "values": values}]}
    assert (
        message_of(raw) == "spec.podSelector.matchExpressions[0].values: must be a list of strings"
    )


@pytest.mark.parametrize("operator", ["In", "NotIn"])
def test_in_and_not_in_without_values_are_refused(operator: str) -> None:
    assert message_of(expression(operator)) == (
        f"spec.podSelector.matchExpressions[0].values: must not be empty for {operator}"
    )


@pytest.mark.parametrize("operator", ["Exists", "DoesNotExist"])
def test_exists_and_does_not_exist_with_values_are_refused(operator: str) -> None:
    assert message_of(expression(operator, "prod")) == (
        f"spec.podSelector.matchExpressions[0].values: must be empty for {operator}"
    )


def test_misspelt_selector_field_is_refused_instead_of_matching_everything() -> None:
    assert message_of({"matchLabel": {"env": "prod"}}) == (
        "spec.podSelector.matchLabel: unknown field"
    )


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        JSON,
        st.fixed_dictionaries(
            {},
            optional={
                "matchLabels": st.one_of(JSON, st.dictionaries(st.text(max_size=4), JSON)),
                "matchExpressions": st.one_of(JSON, st.lists(st.one_of(EXPRESSION, JSON))),
            },
        ),
    )
)
def test_any_selector_shape_parses_or_is_refused_as_an_invalid_policy(raw: Any) -> None:
    try:
        selector = parse(raw)
    except errors.InvalidPolicy as error:
        refusal = str(error)
    else:
        selector.matches({"env": "prod"})
        return
    assert refusal.startswith("spec.podSelector")
