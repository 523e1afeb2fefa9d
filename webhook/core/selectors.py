"""Kubernetes LabelSelector matching, with the apiserver's semantics."""

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from webhook import errors

OPERATORS: Final = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})
_SELECTOR_FIELDS: Final = frozenset({"matchLabels", "matchExpressions"})


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """An empty selector matches everything, as in Kubernetes."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)


def parse(raw: Any, field: str) -> LabelSelector:
    """Parse a LabelSelector object, or raise `InvalidPolicy` about `field`."""
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, Mapping):
        raise errors.InvalidPolicy(field, "must be a label selector object")
    unknown = sorted(str(key) for key in raw if key not in _SELECTOR_FIELDS)
    if unknown:
        # A misspelt `matchLabels` would otherwise leave an empty selector: match everything.
        raise errors.InvalidPolicy(f"{field}.{unknown[0]}", "unknown field")
    requirements: list[Requirement] = []
    match_labels = _absent_as(raw.get("matchLabels"), {})
    if not isinstance(match_labels, Mapping):
        raise errors.InvalidPolicy(f"{field}.matchLabels", "must be a map of strings")
    for key, value in match_labels.items():
        if not isinstance(value, str):
            raise errors.InvalidPolicy(f"{field}.matchLabels.{key}", "must be a string")
        requirements.append(Requirement(str(key), "In", frozenset({value})))
    expressions = _absent_as(raw.get("matchExpressions"), [])
    if not isinstance(expressions, list):
        raise errors.InvalidPolicy(f"{field}.matchExpressions", "must be a list")
    for index, expression in enumerate(expressions):
        where = f"{field}.matchExpressions[{index}]"
        if not isinstance(expression, Mapping) or not isinstance(expression.get("key"), str):
            raise errors.InvalidPolicy(where, "must have a string 'key'")
        operator = expression.get("operator")
        if not isinstance(operator, str) or operator not in OPERATORS:
            raise errors.InvalidPolicy(
                f"{where}.operator", f"must be one of {', '.join(sorted(OPERATORS))}"
            )
        values = _absent_as(expression.get("values"), [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise errors.InvalidPolicy(f"{where}.values", "must be a list of strings")
        if operator in ("In", "NotIn") and not values:
            raise errors.InvalidPolicy(f"{where}.values", f"must not be empty for {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise errors.InvalidPolicy(f"{where}.values", f"must be empty for {operator}")
        requirements.append(Requirement(expression["key"], operator, frozenset(values)))
    return LabelSelector(tuple(requirements))


def _absent_as(value: Any, default: Any) -> Any:
    """`default` for a field that is absent or null; anything else is checked as written."""
    return default if value is None else value
