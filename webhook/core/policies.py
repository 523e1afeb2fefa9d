"""DigestPolicy: parsing a spec into a typed policy, and which policies apply to an image."""

import bisect
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


class PinScope(enum.Enum):
    """Mutate: whether pods of one controller revision share a digest (`Rollout`), or
    each pod gets the digest its tag has when it is admitted (`Pod`)."""

    ROLLOUT = "Rollout"
    POD = "Pod"


_E = TypeVar("_E", bound=enum.Enum)

DEFAULT_MAX_STALE: Final = "10m"
GLOB_MAX_LENGTH: Final = 1024
"""Characters in one glob: a name is at most 255 (the reference grammar), so four times that."""
GLOBS_MAX_ITEMS: Final = 20_000
"""Globs in `images`, and in `excludeImages`: about what etcd's 1.5 MiB object limit allows."""

# Safe regexes only (no nested or adjacent quantifiers that could backtrack).
_GLOB_HOST: Final = re.compile(r"(?:\[[0-9a-fA-F:.*?]+\]|[^:]+)(?::[0-9*?]+)?")
_WHITESPACE: Final = re.compile(r"\s")
_DOUBLE_STAR: Final = re.compile(r"\*\*+")
_LITERAL_RUN: Final = re.compile(r"[^?]+")
# The extra equivalences `re.IGNORECASE` applies beyond lowercasing (`re._casefix`):
# each class of lowercase characters folds to its first member.
_CASE_CLASSES: Final = {
    member: members[0]
    for members in (
        "i\u0131",
        "s\u017f",
        "\u00b5\u03bc",
        "\u0345\u03b9\u1fbe",
        "\u0390\u1fd3",
        "\u03b0\u1fe3",
        "\u03b2\u03d0",
        "\u03b5\u03f5",
        "\u03b8\u03d1",
        "\u03ba\u03f0",
        "\u03c0\u03d6",
        "\u03c1\u03f1",
        "\u03c2\u03c3",
        "\u03c6\u03d5",
        "\u0432\u1c80",
        "\u0434\u1c81",
        "\u043e\u1c82",
        "\u0441\u1c83",
        "\u0442\u1c84\u1c85",
        "\u044a\u1c86",
        "\u0463\u1c87",
        "\u1c88\ua64b",
        "\u1e61\u1e9b",
        "\ufb05\ufb06",
    )
    for member in members
}
_SPEC_FIELDS: Final = frozenset(
    {
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
        "pinScope",
    }
)


@dataclasses.dataclass(frozen=True)
class Glob:
    """A pattern over `registry/repository`: `*` stays within one path segment, `**` does not.

    `?` is one character other than `/`. Matching is case-insensitive, exactly as
    Python's `re.IGNORECASE` compares characters, and takes at most
    O(len(pattern) x len(name)) steps whatever the pattern: there is no regex.
    """

    pattern: str

    def matches(self, name: str) -> bool:
        return self._program.matches(_fold(name))

    @functools.cached_property
    def _program(self) -> "_Program":
        return _Program.compile(_fold(self.pattern))


COVERS_KEPT: Final = 10_000
"""Image names whose coverage one policy remembers; past that, names are matched anew."""
COVERS_KEPT_LENGTH: Final = 512
"""Longer names are matched every time, so the memory holds no huge strings."""


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
    allow_pull_through_first_pull: bool
    """Enforce: accept a tag that ECR's pull-through cache has not imported yet (and that
    the upstream registry has), since such an image cannot be pulled by digest yet."""
    on_resolve_error: OnResolveError
    max_stale_seconds: float
    pin_scope: PinScope = PinScope.ROLLOUT

    @property
    def can_deny(self) -> bool:
        return self.action is not Action.AUDIT

    def selects(self, namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
        return self.namespace_selector.matches(namespace_labels) and self.pod_selector.matches(
            pod_labels
        )

    def covers(self, image_name: str) -> bool:
        """Whether `image_name` (`registry/repository`) is in `images` and not excluded.

        Remembered per name (up to `COVERS_KEPT` names of at most `COVERS_KEPT_LENGTH`
        characters): admissions ask about the same repositories again and again."""
        kept = self._covered.get(image_name)
        if kept is not None:
            return kept
        name = _fold(image_name)
        covered = not self._excluded.matches(name) and self._included.matches(name)
        if len(self._covered) < COVERS_KEPT and len(image_name) <= COVERS_KEPT_LENGTH:
            self._covered[image_name] = covered
        return covered

    # Built with the policy, where it is parsed (off the event loop), never by the first
    # admission that asks: for 20,000 globs that is a third of a second.
    def __post_init__(self) -> None:
        object.__setattr__(self, "_included", _GlobIndex(self.images))
        object.__setattr__(self, "_excluded", _GlobIndex(self.exclude_images))
        object.__setattr__(self, "_covered", {})

    _included: "_GlobIndex" = dataclasses.field(init=False, repr=False, compare=False)
    _excluded: "_GlobIndex" = dataclasses.field(init=False, repr=False, compare=False)
    _covered: dict[str, bool] = dataclasses.field(init=False, repr=False, compare=False)


class _GlobIndex:
    """Globs by their literal prefix: a name is tried only against globs it starts like.

    A policy listing thousands of repositories costs a few dictionary look-ups per
    image, not a match per glob.
    """

    def __init__(self, globs: Iterable[Glob]) -> None:
        self._by_prefix: dict[str, list[Glob]] = {}
        for glob in globs:
            self._by_prefix.setdefault(glob._program.prefix, []).append(glob)
        self._lengths = sorted({len(prefix) for prefix in self._by_prefix})

    def matches(self, name: str) -> bool:
        """Whether any glob matches the folded `name`."""
        for length in self._lengths:
            if length > len(name):
                break
            for glob in self._by_prefix.get(name[:length], ()):
                if glob._program.matches(name):
                    return True
        return False


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Glob:
    """Check `pattern` and make its Glob; what a match needs is prepared on first use."""
    if not pattern:
        raise errors.InvalidPolicy("images", "a pattern must not be empty")
    if len(pattern) > GLOB_MAX_LENGTH:
        raise errors.InvalidPolicy(
            "images",
            f"pattern {pattern[:40]!r}... is {len(pattern)} characters long"
            f" (at most {GLOB_MAX_LENGTH})",
        )
    host, slash, repository = pattern.partition("/")
    # A ':' means a tag, unless it is part of a registry host (`localhost:5000/**`).
    tag_colon = ":" in repository or (
        ":" in host and not (slash and _GLOB_HOST.fullmatch(host) is not None)
    )
    if tag_colon or "@" in pattern or _WHITESPACE.search(pattern) is not None:
        raise errors.InvalidPolicy(
            "images",
            f"pattern {pattern!r} must match registry/repository only (no tag, digest or spaces)",
        )
    return Glob(_canonical_host_part(pattern) if slash else pattern)


def _canonical_host_part(pattern: str) -> str:
    """`pattern` with its registry host spelled as image references are parsed: no
    `:443` (the default port) and no trailing dot, so `host.:443/**` covers what
    `host/**` covers and a glob cannot be written to miss a spelling it names."""
    host, _, rest = pattern.partition("/")
    name, port = host, ""
    if not host.endswith("]") and ":" in host:
        name, _, port = host.rpartition(":")
        if not port.isdigit():
            return pattern
        if int(port) == 443:
            port = ""
    name = name.removesuffix(".") or name
    return f"{name}:{port}/{rest}" if port else f"{name}/{rest}"


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
        allow_pull_through_first_pull=_bool(
            spec.get("allowPullThroughFirstPull", False), "allowPullThroughFirstPull"
        ),
        on_resolve_error=on_error,
        max_stale_seconds=max_stale_seconds,
        pin_scope=_enum(PinScope, spec.get("pinScope", PinScope.ROLLOUT.value), "pinScope"),
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
    return covering(selecting(policies, namespace_labels, pod_labels), image_name)


def selecting(
    policies: Iterable[Policy], namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]
) -> tuple[Policy, ...]:
    """The policies whose selectors match a pod, by name: the same for all its images."""
    chosen = [policy for policy in policies if policy.selects(namespace_labels, pod_labels)]
    chosen.sort(key=lambda policy: policy.name)
    return tuple(chosen)


def covering(selected: tuple[Policy, ...], image_name: str | None) -> tuple[Policy, ...]:
    """Of the `selecting` policies, those whose images cover `image_name` (see `applicable`)."""
    if image_name is None:
        return selected
    return tuple(policy for policy in selected if policy.covers(image_name))


def _globs(raw: Any, field: str, *, required: bool) -> tuple[Glob, ...]:
    if raw is None:
        raw = []
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise errors.InvalidPolicy(field, "must be a list of glob strings")
    if len(raw) > GLOBS_MAX_ITEMS:
        raise errors.InvalidPolicy(
            field,
            f"{len(raw)} globs is more than {GLOBS_MAX_ITEMS}; a `**` covers a whole"
            " tree of repositories",
        )
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


@dataclasses.dataclass(frozen=True)
class _Program:
    """A folded glob, cut where it can be matched without backtracking.

    `pieces` are the parts between `**`s; a piece is a list of path segments (the
    literal `/`s between them); a segment is a list of chunks (the text between
    single `*`s), in which `?` is any one character. Between two `**`s the leftmost
    shortest match of a piece is the one to take, and within a segment the leftmost
    match of each chunk, so no choice is ever revisited.
    """

    exact: bool
    prefix: str
    suffix: str
    min_length: int
    pieces: tuple[tuple[tuple[str, ...], ...], ...]

    @classmethod
    def compile(cls, folded: str) -> "_Program":
        prefix = _literal_prefix(folded)
        suffix = folded[max(folded.rfind("*"), folded.rfind("?")) + 1 :]
        pieces = tuple(
            tuple(tuple(segment.split("*")) for segment in piece.split("/"))
            for piece in _DOUBLE_STAR.split(folded)
        )
        return cls(
            exact=prefix == folded,
            prefix=prefix,
            suffix=suffix,
            min_length=len(folded) - folded.count("*"),
            pieces=pieces,
        )

    def matches(self, name: str) -> bool:
        """Whether the folded `name` matches."""
        if self.exact:
            return name == self.prefix
        if (
            len(name) < self.min_length
            or not name.startswith(self.prefix)
            or not name.endswith(self.suffix)
        ):
            return False
        if len(self.pieces) == 1:
            segments = self.pieces[0]
            if name.count("/") != len(segments) - 1:
                return False
            start = 0
            for segment in segments:
                end = name.find("/", start)
                end = len(name) if end < 0 else end
                if _segment_end(segment, name, start, end, free_start=False, free_end=False) < 0:
                    return False
                start = end + 1
            return True
        bounds = _Bounds.of(name)
        position = _piece_end(self.pieces[0], name, bounds, 0, anchored=True)
        for piece in self.pieces[1:-1]:
            if position < 0:
                return False
            position = _piece_end(piece, name, bounds, position, anchored=False)
        return position >= 0 and _piece_ends_name(self.pieces[-1], name, bounds, position)


@dataclasses.dataclass(frozen=True)
class _Bounds:
    """Where the path segments of a name start and end (an end is the index of its `/`)."""

    slashes: list[int]
    starts: list[int]
    ends: list[int]

    @classmethod
    def of(cls, name: str) -> "_Bounds":
        slashes = []
        found = name.find("/")
        while found >= 0:
            slashes.append(found)
            found = name.find("/", found + 1)
        return cls(slashes, [0, *(slash + 1 for slash in slashes)], [*slashes, len(name)])

    def segment_at(self, position: int) -> int:
        """The segment `position` is in; a `/` ends the segment before it."""
        return bisect.bisect_left(self.slashes, position)


def _piece_end(
    piece: tuple[tuple[str, ...], ...], name: str, bounds: _Bounds, start: int, *, anchored: bool
) -> int:
    """The least end of a match of `piece` (followed by `**`) in `name` that begins at
    `start`, or anywhere after it unless `anchored`; -1 if there is none."""
    first = bounds.segment_at(start)
    for segment in range(first, len(bounds.starts) - len(piece) + 1):
        low = start if segment == first else bounds.starts[segment]
        end = _spans(piece, name, bounds, segment, low, anchored=anchored, free_end=True)
        if end >= 0 or anchored:
            return end
    return -1


def _piece_ends_name(
    piece: tuple[tuple[str, ...], ...], name: str, bounds: _Bounds, start: int
) -> bool:
    """Whether `piece` matches a suffix of `name` that begins at `start` or after it."""
    segment = len(bounds.starts) - len(piece)
    first = bounds.segment_at(start)
    if segment < first:
        return False
    low = start if segment == first else bounds.starts[segment]
    return _spans(piece, name, bounds, segment, low, anchored=False, free_end=False) >= 0


def _spans(
    piece: tuple[tuple[str, ...], ...],
    name: str,
    bounds: _Bounds,
    segment: int,
    low: int,
    *,
    anchored: bool,
    free_end: bool,
) -> int:
    """The least end of `piece` laid over the name's segments from `segment` on, or -1.

    Its first path segment matches that segment from `low` (anywhere after `low`
    unless `anchored`), the ones between match whole segments, and its last one
    matches the start of its segment (all of it unless `free_end`).
    """
    last = len(piece) - 1
    high = bounds.ends[segment]
    if last == 0:
        return _segment_end(piece[0], name, low, high, free_start=not anchored, free_end=free_end)
    if _segment_end(piece[0], name, low, high, free_start=not anchored, free_end=False) < 0:
        return -1
    for offset in range(1, last):
        index = segment + offset
        start, end = bounds.starts[index], bounds.ends[index]
        if _segment_end(piece[offset], name, start, end, free_start=False, free_end=False) < 0:
            return -1
    index = segment + last
    start, end = bounds.starts[index], bounds.ends[index]
    return _segment_end(piece[last], name, start, end, free_start=False, free_end=free_end)


def _segment_end(
    chunks: tuple[str, ...], text: str, low: int, high: int, *, free_start: bool, free_end: bool
) -> int:
    """The least end of a match of one path segment's chunks within `text[low:high]` (which
    holds no `/`), or -1. The match begins at `low`, or anywhere if `free_start` (a `*` before
    it), and ends at `high` unless `free_end` (a `**` after it)."""
    if free_start:
        chunks = ("", *chunks)
    head, tail = chunks[0], chunks[-1]
    if len(chunks) == 1:
        if free_end:
            return low + len(head) if _chunk_at(text, head, low, high) else -1
        return high if high - low == len(head) and _chunk_at(text, head, low, high) else -1
    if not _chunk_at(text, head, low, high):
        return -1
    position = low + len(head)
    if free_end:
        for chunk in chunks[1:]:
            found = _find_chunk(text, chunk, position, high)
            if found < 0:
                return -1
            position = found + len(chunk)
        return position
    tail_start = high - len(tail)
    if tail_start < position or not _chunk_at(text, tail, tail_start, high):
        return -1
    for chunk in chunks[1:-1]:
        found = _find_chunk(text, chunk, position, tail_start)
        if found < 0:
            return -1
        position = found + len(chunk)
    return high


def _chunk_at(text: str, chunk: str, position: int, high: int) -> bool:
    """Whether `chunk` (literal text and `?`s) matches `text` at `position`, before `high`."""
    if position + len(chunk) > high:
        return False
    if "?" not in chunk:
        return text.startswith(chunk, position)
    return all(
        expected == "?" or text[position + offset] == expected
        for offset, expected in enumerate(chunk)
    )


def _find_chunk(text: str, chunk: str, low: int, high: int) -> int:
    """Where `chunk` first matches within `text[low:high]`, or -1."""
    if "?" not in chunk:
        return text.find(chunk, low, high)
    literal = _LITERAL_RUN.search(chunk)
    if literal is None:
        return low if low + len(chunk) <= high else -1
    offset, run = literal.start(), literal.group()
    position = low
    while position + len(chunk) <= high:
        found = text.find(run, position + offset, high - (len(chunk) - offset - len(run)))
        if found < 0:
            return -1
        if _chunk_at(text, chunk, found - offset, high):
            return found - offset
        position = found - offset + 1
    return -1


def _literal_prefix(folded: str) -> str:
    wildcards = [found for found in (folded.find("*"), folded.find("?")) if found >= 0]
    return folded[: min(wildcards)] if wildcards else folded


def _fold(text: str) -> str:
    """`text` with each character replaced by one that `re.IGNORECASE` treats as equal to it."""
    if text.isascii():
        return text.lower()
    return "".join(_fold_character(character) for character in text)


def _fold_character(character: str) -> str:
    lower = character.lower()
    if len(lower) != 1:
        # Only U+0130 lowers to two characters; its simple lowercase (what `re` uses) is `i`.
        lower = "i"
    return _CASE_CLASSES.get(lower, lower)
