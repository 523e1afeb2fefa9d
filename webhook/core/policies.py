"""DigestPolicy: parsing a spec into a typed policy, and which policies apply to an image."""

import dataclasses
import enum
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

from webhook import errors
from webhook.core import durations, selectors


class Action(enum.Enum):
    MUTATE = "Mutate"
    ENFORCE = "Enforce"
    AUDIT = "Audit"


class OnResolveError(enum.Enum):
    DENY = "Deny"
    ALLOW = "Allow"


_E = TypeVar("_E", bound=enum.Enum)

DEFAULT_MAX_STALE: Final = "10m"
_GLOB_HOST: Final = re.compile(r"(?:\[[0-9a-fA-F:.*?]+\]|[^:]+)(?::[0-9*?]+)?")
_SPEC_FIELDS: Final = frozenset(
    {
        "namespaceSelector",
        "podSelector",
        "images",
        "excludeImages",
        "action",
        "keepTag",
        "allowImmutableTags",
        "onResolveError",
        "maxStale",
    }
)


@dataclasses.dataclass(frozen=True)
class Glob:
    """A pattern over `registry/repository`: `*` stays within one path segment, `**` does not."""

    pattern: str
    regex: re.Pattern[str]

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    generation: int
    namespace_selector: selectors.LabelSelector
    pod_selector: selectors.LabelSelector
    images: tuple[Glob, ...]
    exclude_images: tuple[Glob, ...]
    action: Action
    keep_tag: bool
    allow_immutable_tags: bool
    on_resolve_error: OnResolveError
    max_stale_seconds: float

    @property
    def can_deny(self) -> bool:
        return self.action is not Action.AUDIT

    def selects(self, namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
        return self.namespace_selector.matches(namespace_labels) and self.pod_selector.matches(
            pod_labels
        )

    def covers(self, image_name: str) -> bool:
        """Whether `image_name` (`registry/repository`) is in `images` and not excluded."""
        if any(glob.matches(image_name) for glob in self.exclude_images):
            return False
        return any(glob.matches(image_name) for glob in self.images)


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Glob:
    if not pattern:
        raise errors.InvalidPolicy("images", "a pattern must not be empty")
    host, slash, repository = pattern.partition("/")
    # A ':' means a tag, unless it is part of a registry host (`localhost:5000/**`).
    host_colon = bool(slash) and _GLOB_HOST.fullmatch(host) is not None
    tag_colon = ":" in repository or (":" in host and not host_colon)
    if tag_colon or "@" in pattern or any(ch.isspace() for ch in pattern):
        raise errors.InvalidPolicy(
            "images",
            f"pattern {pattern!r} must match registry/repository only (no tag, digest or spaces)",
        )
    parts: list[str] = []
    position = 0
    while position < len(pattern):
        if pattern.startswith("**", position):
            parts.append(".*")
            position += 2
        elif pattern[position] == "*":
            parts.append("[^/]*")
            position += 1
        elif pattern[position] == "?":
            parts.append("[^/]")
            position += 1
        else:
            parts.append(re.escape(pattern[position]))
            position += 1
    # Registry hosts are case-insensitive; repository names are lowercase by grammar.
    return Glob(pattern=pattern, regex=re.compile("".join(parts), re.IGNORECASE))


def parse(name: str, generation: int, spec: Any) -> Policy:
    """Parse the `spec` of DigestPolicy `name`, or raise `InvalidPolicy` naming the field."""
    if not isinstance(spec, Mapping):
        raise errors.InvalidPolicy("", "spec must be an object")
    unknown = sorted(set(spec) - _SPEC_FIELDS)
    if unknown:
        raise errors.InvalidPolicy(unknown[0], "unknown field")
    images = _globs(spec.get("images"), "images", required=True)
    exclude = _globs(spec.get("excludeImages"), "excludeImages", required=False)
    action = _enum(Action, spec.get("action", Action.MUTATE.value), "action")
    on_error = _enum(
        OnResolveError, spec.get("onResolveError", OnResolveError.DENY.value), "onResolveError"
    )
    max_stale = spec.get("maxStale", DEFAULT_MAX_STALE)
    if not isinstance(max_stale, str):
        raise errors.InvalidPolicy("maxStale", "must be a duration string such as '10m'")
    try:
        max_stale_seconds = durations.parse_seconds(max_stale)
    except errors.InvalidDuration as error:
        raise errors.InvalidPolicy("maxStale", str(error)) from None
    return Policy(
        name=name,
        generation=generation,
        namespace_selector=selectors.parse(spec.get("namespaceSelector"), "namespaceSelector"),
        pod_selector=selectors.parse(spec.get("podSelector"), "podSelector"),
        images=images,
        exclude_images=exclude,
        action=action,
        keep_tag=_bool(spec.get("keepTag", True), "keepTag"),
        allow_immutable_tags=_bool(spec.get("allowImmutableTags", False), "allowImmutableTags"),
        on_resolve_error=on_error,
        max_stale_seconds=max_stale_seconds,
    )


def applicable(
    policies: Iterable[Policy],
    image_name: str | None,
    namespace_labels: Mapping[str, str],
    pod_labels: Mapping[str, str],
) -> tuple[Policy, ...]:
    """The policies that apply to one image, by name; `image_name` None means unparseable.

    An image whose reference does not parse cannot be matched against globs, so every
    policy whose selectors match it applies: such an image cannot be pulled anyway.
    """
    return tuple(
        sorted(
            (
                policy
                for policy in policies
                if policy.selects(namespace_labels, pod_labels)
                and (image_name is None or policy.covers(image_name))
            ),
            key=lambda policy: policy.name,
        )
    )


def _globs(raw: Any, field: str, *, required: bool) -> tuple[Glob, ...]:
    if raw is None:
        raw = []
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise errors.InvalidPolicy(field, "must be a list of glob strings")
    if required and not raw:
        raise errors.InvalidPolicy(field, "must list at least one glob")
    try:
        return tuple(compile_glob(item) for item in raw)
    except errors.InvalidPolicy as error:
        raise errors.InvalidPolicy(field, error.problem) from None


def _enum(kind: type[_E], raw: Any, field: str) -> _E:
    try:
        return kind(raw)
    except ValueError:
        allowed = " | ".join(str(member.value) for member in kind)
        raise errors.InvalidPolicy(field, f"{raw!r} is not one of {allowed}") from None


def _bool(raw: Any, field: str) -> bool:
    if not isinstance(raw, bool):
        raise errors.InvalidPolicy(field, "must be true or false")
    return raw
