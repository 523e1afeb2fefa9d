"""Image references: the one parser of the Docker/OCI reference grammar, and ECR hosts.

The grammar is the one of `distribution/reference` (the code every container
runtime uses), so a string accepted here is one a kubelet can pull, and a string
refused here gets a message saying which part is wrong.

One image, one name: the parsed registry is canonical, so that policy globs, routing
(ECR or OCI), the cache and messages all see one spelling of each registry however
a pod writes it. `canonical_host` says what is folded together and why.
"""

import dataclasses
import functools
import re
from collections.abc import Iterable
from typing import Final, NewType

from webhook import errors

Digest = NewType("Digest", str)
"""An OCI content digest, `algorithm:hex`, for example `sha256:9f86…`."""

PlainHttpHosts = NewType("PlainHttpHosts", frozenset[str])
"""Canonical hosts (and `host:port`s) of the registries reached over plain HTTP."""
NO_PLAIN_HTTP: Final = PlainHttpHosts(frozenset())

DOCKER_HUB: Final = "docker.io"
_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
NAME_MAX_LENGTH: Final = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
# As in `distribution/reference`, plus one trailing dot after a domain name (the
# fully qualified spelling of the same host), which `canonical_host` removes.
_DOMAIN = re.compile(
    rf"(?P<host>{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*\.?|\[[0-9a-fA-F:.]+\])"
    r"(?::(?P<port>[0-9]+))?"
)
_PORT_MAX: Final = 65535
_HTTPS_PORT: Final = 443
_HTTP_PORT: Final = 80
# ASCII only, as in Go's `\w`: Python's `\w` would also accept letters of every script.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_WHITESPACE = re.compile(r"\s")
"""What `str.isspace` calls whitespace: both use the same Unicode table."""
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_DIGEST_HEX_LENGTHS: Final = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclasses.dataclass(frozen=True)
class EcrRegistry:
    """Where an ECR private registry lives: the account is BatchGetImage's registryId."""

    account: str
    region: str
    partition: str
    fips: bool
    dualstack: bool


@dataclasses.dataclass(frozen=True)
class ImageReference:
    """A parsed, normalised image reference; `original` is the string as written."""

    original: str
    registry: str
    """Canonical (`canonical_host`), Docker Hub's aliases folded into `docker.io`."""
    repository: str
    tag: str | None
    digest: Digest | None

    @property
    def name(self) -> str:
        """`registry/repository`: what policy globs are matched against."""
        return f"{self.registry}/{self.repository}"

    @property
    def ecr(self) -> EcrRegistry | None:
        return parse_ecr_host(self.registry)

    def pinned(self, digest: Digest, *, keep_tag: bool) -> str:
        """The reference as it should be written to pin `digest`.

        The original spelling of registry and repository is kept (`nginx` stays
        `nginx`), so only the tag/digest part of the string changes.
        """
        base = self.original.split("@", 1)[0]
        untagged = base[: -(len(self.tag) + 1)] if self.tag is not None else base
        if keep_tag and self.tag is not None:
            return f"{untagged}:{self.tag}@{digest}"
        return f"{untagged}@{digest}"


PARSED_KEPT: Final = 4096
"""References remembered once parsed (admissions name the same images again and again)."""
PARSED_KEPT_LENGTH: Final = 512
"""Longer image strings are parsed every time, so the memory holds no huge strings."""


def parse(image: str, *, plain_http: PlainHttpHosts = NO_PLAIN_HTTP) -> ImageReference:
    """Parse `image`, or raise `InvalidReference` naming the part that is wrong.

    `plain_http` (from `plain_http_hosts`) names the registries reached over plain
    HTTP, whose default port is 80 rather than 443 (see `canonical_host`). The result
    (an immutable value) of a reference seen before is remembered, not parsed again.
    """
    if len(image) <= PARSED_KEPT_LENGTH:
        return _parse_kept(image, plain_http)
    return _parse(image, plain_http)


@functools.lru_cache(maxsize=PARSED_KEPT)
def _parse_kept(image: str, plain_http: PlainHttpHosts) -> ImageReference:
    return _parse(image, plain_http)


def _parse(image: str, plain_http: PlainHttpHosts) -> ImageReference:
    if not image:
        raise errors.InvalidReference(image, "the reference is empty")
    if image != image.strip():
        raise errors.InvalidReference(image, "leading or trailing whitespace")
    if _WHITESPACE.search(image) is not None:
        raise errors.InvalidReference(image, "whitespace inside the reference")
    if image.count("@") > 1:
        raise errors.InvalidReference(image, "more than one '@'")

    remainder, _, digest = image.partition("@")
    if "@" in image:
        _check_digest(image, digest)

    registry, path = _split_registry(image, remainder)
    path, tag = _split_tag(image, path)

    if not path:
        raise errors.InvalidReference(image, "the repository name is empty")
    for component in path.split("/"):
        if not component:
            raise errors.InvalidReference(image, "the repository name has an empty path component")
        if not _PATH_COMPONENT.fullmatch(component):
            problem = (
                f"repository path component {component!r} must be lowercase letters and"
                " digits, separated by '.', '_', '__' or '-'"
            )
            raise errors.InvalidReference(image, problem)
    written_name = f"{registry}/{path}" if registry else path
    if len(written_name) > NAME_MAX_LENGTH:
        raise errors.InvalidReference(
            image, f"the name is {len(written_name)} characters long (at most {NAME_MAX_LENGTH})"
        )

    if registry is not None:
        registry = canonical_host(registry, plain_http=plain_http)
        if registry is None:
            raise errors.InvalidReference(image, "the registry port is above 65535")
    if registry is None or registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return ImageReference(
        original=image,
        registry=registry,
        repository=path,
        tag=tag,
        digest=Digest(digest) if digest else None,
    )


def canonical_host(host: str, *, plain_http: PlainHttpHosts = NO_PLAIN_HTTP) -> str | None:
    """The one spelling of registry `host[:port]`, or None when it is not a valid one.

    Every spelling that reaches the same registry endpoint gets the same result, so a
    policy glob or the ECR host pattern cannot be sidestepped by writing a host
    differently: lower case (DNS names are case-insensitive), no trailing dot (the
    fully qualified form of the same name), the port as a plain number, and no default
    port. The default port is 443, except for the registries of `plain_http` where it
    is 80; for those `:443` stays, as the other ports do: it names another endpoint.

    Which registries speak plain HTTP is configuration, and it is taken here as a
    parameter rather than applied later in the OCI client: `:80` must be folded
    before policy globs are matched, or `host:80/app` would escape a policy over
    `host/**`, and the parser is the one place every caller already goes through.
    """
    split = _split_host(host)
    if split is None:
        return None
    name, port = split
    if port is None:
        return name
    if f"{name}:{port}" in plain_http:
        return f"{name}:{port}"
    default = _HTTP_PORT if name in plain_http else _HTTPS_PORT
    return name if port == default else f"{name}:{port}"


def plain_http_hosts(entries: Iterable[str]) -> PlainHttpHosts:
    """The configured plain-HTTP registries (`host[:port]`), canonical as `parse` needs them.

    Raises `ConfigurationError` for an entry that is not a `host[:port]`.
    """
    hosts: set[str] = set()
    for entry in entries:
        split = _split_host(entry.strip())
        if split is None:
            raise errors.ConfigurationError(
                f"plain-HTTP registry {entry!r} is not a host[:port] (no scheme, no path)"
            )
        name, port = split
        hosts.add(name if port in (None, _HTTP_PORT) else f"{name}:{port}")
    return PlainHttpHosts(frozenset(hosts))


def _split_host(host: str) -> tuple[str, int | None] | None:
    """(lower-case host without a trailing dot, port) of a valid `host[:port]`, else None."""
    match = _DOMAIN.fullmatch(host.lower())
    if match is None:
        return None
    port = None if match["port"] is None else int(match["port"])
    if port is not None and port > _PORT_MAX:
        return None
    return match["host"].removesuffix("."), port


def _check_digest(image: str, digest: str) -> None:
    if not digest:
        raise errors.InvalidReference(image, "'@' is not followed by a digest")
    if not _DIGEST.fullmatch(digest):
        raise errors.InvalidReference(
            image, f"digest {digest!r} is not 'algorithm:hex' with at least 32 hex digits"
        )
    algorithm, _, hex_part = digest.partition(":")
    expected = _DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is not None:
        if len(hex_part) != expected:
            problem = f"a {algorithm} digest has {expected} hex digits, not {len(hex_part)}"
            raise errors.InvalidReference(image, problem)
        if hex_part != hex_part.lower():
            raise errors.InvalidReference(image, f"a {algorithm} digest must be lowercase hex")


def _split_registry(image: str, remainder: str) -> tuple[str | None, str]:
    first, slash, rest = remainder.partition("/")
    # The first component is a registry host only if it looks like one: this is how
    # every runtime tells `localhost:5000/app` from `library/app`.
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _DOMAIN.fullmatch(first):
            raise errors.InvalidReference(
                image, f"registry host {first!r} is not a valid host[:port]"
            )
        return first, rest
    return None, remainder


def _split_tag(image: str, path: str) -> tuple[str, str | None]:
    last_slash = path.rfind("/")
    colon = path.find(":", last_slash + 1)
    if colon < 0:
        return path, None
    tag = path[colon + 1 :]
    if not tag:
        raise errors.InvalidReference(image, "':' is not followed by a tag")
    if not _TAG.fullmatch(tag):
        problem = (
            f"tag {tag!r} must be 1-128 characters of letters, digits, '_', '.' or '-',"
            " not starting with '.' or '-'"
        )
        raise errors.InvalidReference(image, problem)
    return path[:colon], tag


# Every host form of an ECR private registry, after the forms that AWS documents and
# that amazon-ecr-credential-helper accepts.
_ECR_HOST: Final = re.compile(
    r"(?P<account>[0-9]{12})"
    r"\.dkr(?P<dualstack_dash>-ecr|\.ecr)(?P<fips>-fips)?"
    r"\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+)"
    r"\.(?P<suffix>amazonaws\.com\.cn|amazonaws\.com|on\.aws|on\.amazonwebservices\.com\.cn"
    r"|c2s\.ic\.gov|sc2s\.sgov\.gov|cloud\.adc-e\.uk|csp\.hci\.ic\.gov)"
)
_PARTITION_OF_SUFFIX: Final = {
    "amazonaws.com": "aws",
    "on.aws": "aws",
    "amazonaws.com.cn": "aws-cn",
    "on.amazonwebservices.com.cn": "aws-cn",
    "c2s.ic.gov": "aws-iso",
    "sc2s.sgov.gov": "aws-iso-b",
    "cloud.adc-e.uk": "aws-iso-e",
    "csp.hci.ic.gov": "aws-iso-f",
}
_DUALSTACK_SUFFIXES: Final = frozenset({"on.aws", "on.amazonwebservices.com.cn"})
# Regions outside the commercial partition, by name prefix.
_PARTITION_OF_REGION_PREFIX: Final = (
    ("us-gov-", "aws-us-gov"),
    ("cn-", "aws-cn"),
    ("us-isob-", "aws-iso-b"),
    ("us-iso-", "aws-iso"),
    ("eu-isoe-", "aws-iso-e"),
    ("us-isof-", "aws-iso-f"),
)


@functools.lru_cache(maxsize=1024)
def parse_ecr_host(host: str) -> EcrRegistry | None:
    """The ECR registry that `host` names, or None when it is not an ECR private registry.

    Any spelling `canonical_host` folds is accepted (`…amazonaws.com:443`, a trailing
    dot, capitals): ECR is only ever reached over HTTPS on its default port.
    """
    canonical = canonical_host(host)
    if canonical is None:
        return None
    match = _ECR_HOST.fullmatch(canonical)
    if match is None:
        return None
    suffix = match["suffix"]
    dualstack = suffix in _DUALSTACK_SUFFIXES
    # Dual-stack hosts are spelled `dkr-ecr`, IPv4-only ones `dkr.ecr`; a mix is no ECR host.
    if dualstack != (match["dualstack_dash"] == "-ecr"):
        return None
    region = match["region"]
    partition = next(
        (name for prefix, name in _PARTITION_OF_REGION_PREFIX if region.startswith(prefix)), "aws"
    )
    # GovCloud shares the commercial domains; every other partition has its own.
    domain_partition = _PARTITION_OF_SUFFIX[suffix]
    if partition != domain_partition and (partition, domain_partition) != ("aws-us-gov", "aws"):
        return None
    return EcrRegistry(
        account=match["account"],
        region=region,
        partition=partition,
        fips=match["fips"] is not None,
        dualstack=dualstack,
    )
