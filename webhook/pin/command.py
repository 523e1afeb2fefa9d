"""`digestguard pin`: read manifests, look their images up, pin them in place or report.

Everything is read and parsed before the first registry call, and every lookup of the
run goes out at once through the webhook's resolver (`registries.oneshot`): a stream
that does not parse changes nothing, and a hundred Deployments of one repository cost
one BatchGetImage. A file is rewritten only when an image in it changes, through a
temporary file renamed over it, so an interrupted run never leaves half a file.

Exit codes: 0 all pinned (or pinned now); 1 an image is missing, not a valid
reference, cannot be rewritten where it is written, or (`--check`) not pinned;
2 a registry could not tell; 64 bad usage or a manifest that cannot be read.
"""

import contextlib
import dataclasses
import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TextIO

from webhook import errors
from webhook.core import outcomes, pinning, policies, references
from webhook.pin import yamltext
from webhook.registries import oneshot
from webhook.registries.oci import dockerconfig

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_UNKNOWN: Final = 2
EXIT_USAGE: Final = 64
STDIN: Final = "-"
STDIN_NAME: Final = "<stdin>"
SUFFIXES: Final = (".yaml", ".yml")
KRM_RESULTS: Final = "results"


@dataclasses.dataclass(frozen=True)
class Options:
    paths: tuple[str, ...]
    check: bool = False
    stdout: bool = False
    krm: bool = False
    policy_files: tuple[str, ...] = ()
    namespace_labels: Mapping[str, str] | None = None
    budget: float = 30.0
    ecr_endpoint_url: str | None = None
    plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP
    ca_file: str | None = None
    credentials: dockerconfig.Credentials | None = None


@dataclasses.dataclass
class Source:
    """One YAML stream: a file, or standard input."""

    name: str
    path: pathlib.Path | None
    text: str
    bom: bool
    documents: list[Any]
    targets: list[pinning.Target] = dataclasses.field(default_factory=list)
    document_of: list[int] = dataclasses.field(default_factory=list)
    """For each target, the index of its document."""
    pinned: str = ""
    """The text with the images pinned (`_judge_all` sets it)."""


@dataclasses.dataclass(frozen=True)
class Report:
    """One line for the user (and one KRM result): what is wrong or what was done."""

    severity: str  # "error" | "warning" | "info"
    text: str
    """What is said, without the file and line (a KRM result has those apart)."""
    source: Source
    result: pinning.Result
    line: int | None

    @property
    def message(self) -> str:
        where = f"{self.source.name}:{self.line}" if self.line is not None else self.source.name
        return f"{where}: {self.text}"


def run(options: Options, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Run `digestguard pin`; the exit code."""
    try:
        digest_policies = _policies(options.policy_files)
        rules = pinning.Rules(
            digest_policies=digest_policies, namespace_labels=options.namespace_labels
        )
        sources = list(_sources(options.paths, stdin))
    except (errors.InvalidManifest, errors.ConfigurationError) as error:
        print(f"digestguard pin: {error}", file=stderr)
        return EXIT_USAGE
    if digest_policies is not None and options.namespace_labels is None:
        for policy in digest_policies:
            if policy.namespace_selector.requirements:
                print(
                    f"digestguard pin: note: DigestPolicy {policy.name}: namespaceSelector is"
                    " not matched (namespace labels are not in manifests; see"
                    " --namespace-labels)",
                    file=stderr,
                )
    krm = options.krm or _is_krm_input(sources)
    if krm:
        return _run_krm(options, sources, rules, stdout, stderr)
    for source in sources:
        for index, document in enumerate(source.documents):
            _collect(source, index, document, rules, options)
    results = _lookup(sources, options)
    reports = _judge_all(sources, results, check=options.check)
    for report in reports:
        print(report.message, file=stderr)
    status = _status(reports)
    if not options.check:
        status = max(status, _write(sources, options, stdout, stderr))
    return status


def _policies(files: Sequence[str]) -> tuple[policies.Policy, ...] | None:
    if not files:
        return None
    found: list[policies.Policy] = []
    for name in files:
        text, _ = _read(pathlib.Path(name), name)
        try:
            documents = yamltext.load(text)
            found.extend(
                pinning.parse_policies(
                    (yamltext.start_line(document) or 1, document) for document in documents
                )
            )
        except errors.InvalidManifest as error:
            raise errors.InvalidManifest(error.line, error.problem, name) from None
    if not found:
        raise errors.ConfigurationError(f"--policy: no DigestPolicy in {', '.join(files)}")
    return tuple(found)


def _sources(paths: Sequence[str], stdin: TextIO) -> Iterator[Source]:
    """Each stream once, in the order named (a file inside a named folder too)."""
    seen: set[pathlib.Path] = set()
    for source in _named_sources(paths, stdin):
        if source.path is not None:
            resolved = source.path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
        yield source


def _named_sources(paths: Sequence[str], stdin: TextIO) -> Iterator[Source]:
    for raw in paths:
        if raw == STDIN:
            binary = getattr(stdin, "buffer", None)
            if binary is None:
                text = stdin.read()
                yield _parsed(STDIN_NAME, None, text.removeprefix("\ufeff"), text[:1] == "\ufeff")
            else:
                yield _parsed(STDIN_NAME, None, *_decoded(binary.read(), STDIN_NAME))
            continue
        path = pathlib.Path(raw)
        if path.is_dir():
            files = sorted(
                found
                for found in path.rglob("*")
                if found.suffix in SUFFIXES
                and found.is_file()
                and not any(part.startswith(".") for part in found.relative_to(path).parts)
            )
            for found in files:
                yield _parsed(str(found), found, *_read(found, str(found)))
        elif path.is_file():
            yield _parsed(raw, path, *_read(path, raw))
        else:
            raise errors.ConfigurationError(f"{raw}: no such file or directory")


def _read(path: pathlib.Path, name: str) -> tuple[str, bool]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise errors.ConfigurationError(f"{name}: {error.strerror or error}") from None
    return _decoded(data, name)


def _decoded(data: bytes, name: str) -> tuple[str, bool]:
    """The text of UTF-8 bytes (a byte order mark dropped), and whether it had one."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise errors.InvalidManifest(line, "not UTF-8 text", name) from None
    return text, data.startswith(b"\xef\xbb\xbf")


def _parsed(name: str, path: pathlib.Path | None, text: str, bom: bool) -> Source:
    try:
        documents = yamltext.load(text)
    except errors.InvalidManifest as error:
        raise errors.InvalidManifest(error.line, error.problem, name) from None
    return Source(name, path, text, bom, documents)


def _is_krm_input(sources: Sequence[Source]) -> bool:
    return (
        len(sources) == 1
        and sources[0].path is None
        and len(sources[0].documents) == 1
        and pinning.is_resource_list(sources[0].documents[0])
    )


def _collect(
    source: Source, index: int, document: Any, rules: pinning.Rules, options: Options
) -> None:
    """Add the targets of one document (a `List` is its items) to `source`."""
    objects: list[tuple[tuple[pinning.PathKey, ...], Any]] = [((), document)]
    if isinstance(document, Mapping) and str(document.get("kind", "")).endswith("List"):
        items = document.get("items")
        if isinstance(items, list):
            objects = [(("items", position), item) for position, item in enumerate(items)]
    for prefix, obj in objects:
        for target in pinning.targets(obj, rules, prefix=prefix, plain_http=options.plain_http):
            source.targets.append(target)
            source.document_of.append(index)


def _lookup(sources: Sequence[Source], options: Options) -> dict[outcomes.Query, outcomes.Outcome]:
    queries = pinning.queries(target for source in sources for target in source.targets)
    return oneshot.lookup(
        queries,
        budget=options.budget,
        ecr_endpoint_url=options.ecr_endpoint_url,
        plain_http=options.plain_http,
        ca_file=options.ca_file,
        credentials=options.credentials,
    )


def _judge_all(
    sources: Sequence[Source],
    results: Mapping[outcomes.Query, outcomes.Outcome],
    *,
    check: bool,
) -> list[Report]:
    """A report for everything worth saying; each source's `pinned` text is set."""
    reports: list[Report] = []
    for source in sources:
        edits: dict[tuple[int, int], tuple[yamltext.Edit, int]] = {}
        for target, index in zip(source.targets, source.document_of, strict=True):
            result = pinning.judge(target, results)
            where = yamltext.position(source.documents[index], target.path)
            line = where[0] + 1 if where is not None else None
            report = _report(source, result, line, check=check)
            if report is None:
                continue
            if result.status is pinning.Status.REWRITE and not check and result.value:
                if where is None:
                    report = _unwritable(source, result, line)
                else:
                    edit = yamltext.Edit(*where, target.container.image, result.value)
                    edits[where] = (edit, len(reports))
            reports.append(report)
        source.pinned, refused = yamltext.apply(source.text, (edit for edit, _ in edits.values()))
        for edit in refused:
            position = edits[(edit.line, edit.column)][1]
            reports[position] = _unwritable(source, reports[position].result, edit.line + 1)
    return reports


def _report(
    source: Source, result: pinning.Result, line: int | None, *, check: bool
) -> Report | None:
    target = result.target
    head = f"{target.container.label} in {target.resource.label}:"
    image = target.container.shown_image
    if result.status is pinning.Status.VERIFIED:
        if result.note is None:
            return None
        return Report("warning", f"{head} image {image}: {result.note}", source, result, line)
    if result.status is pinning.Status.REWRITE:
        if check:
            message = f"{head} image {image} is not pinned by digest (pinned: {result.value})"
            return Report("error", message, source, result, line)
        return Report("info", f"{head} pinned {image} to {result.value}", source, result, line)
    return Report("error", f"{head} image {image}: {result.detail}", source, result, line)


def _unwritable(source: Source, result: pinning.Result, line: int | None) -> Report:
    target = result.target
    message = (
        f"{target.container.label} in {target.resource.label}:"
        f" image {target.container.shown_image} is not written as a one-line scalar"
        f" (block scalar, alias or escapes): not rewritten; write it as {result.value}"
    )
    return Report("error", message, source, result, line)


def _status(reports: Iterable[Report]) -> int:
    status = EXIT_OK
    for report in reports:
        if report.severity != "error":
            continue
        if report.result.status is pinning.Status.UNKNOWN:
            status = max(status, EXIT_UNKNOWN)
        else:
            status = max(status, EXIT_FAILED)
    return status


def _write(sources: Sequence[Source], options: Options, stdout: TextIO, stderr: TextIO) -> int:
    """Write each source's pinned text: in place when it changed, or to standard output.

    A file that cannot be written is named, and the others are still written; 64 then.
    """
    status = EXIT_OK
    to_stdout = options.stdout or any(source.path is None for source in sources)
    for number, source in enumerate(sources):
        text = source.pinned
        if to_stdout:
            if number and not text.lstrip().startswith("---"):
                stdout.write("---\n")
            stdout.write(text if text.endswith("\n") or not text else text + "\n")
        elif text != source.text and source.path is not None:
            try:
                _replace(source.path.resolve(), ("\ufeff" if source.bom else "") + text)
            except OSError as error:
                print(
                    f"digestguard pin: {source.name}: not written: {error.strerror or error}",
                    file=stderr,
                )
                status = EXIT_USAGE
    return status


def _replace(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in its folder, renamed over it
    (`path` resolved: a symbolic link stays a link, to the file now pinned)."""
    mode = path.stat().st_mode & 0o7777
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# KRM functions (kustomize, kpt): a ResourceList on stdin, the same with results on stdout.


def _run_krm(
    options: Options,
    sources: Sequence[Source],
    rules: pinning.Rules,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    if len(sources) != 1 or len(sources[0].documents) != 1:
        print("digestguard pin: --krm reads one ResourceList on standard input", file=stderr)
        return EXIT_USAGE
    source = sources[0]
    resource_list = source.documents[0]
    if not pinning.is_resource_list(resource_list):
        print(
            f"digestguard pin: {source.name}: --krm needs a ResourceList"
            f" ({' or '.join(sorted(pinning.KRM_API_VERSIONS))})",
            file=stderr,
        )
        return EXIT_USAGE
    config = resource_list.get("functionConfig")
    if isinstance(config, Mapping) and config.get("kind") == "DigestPolicy":
        try:
            configured = pinning.parse_policies([(yamltext.start_line(config) or 1, config)])
        except errors.InvalidManifest as error:
            print(f"digestguard pin: functionConfig: {error}", file=stderr)
            return EXIT_USAGE
        rules = pinning.Rules(
            digest_policies=(rules.digest_policies or ()) + configured,
            namespace_labels=rules.namespace_labels,
        )
    items = resource_list.get("items")
    if not isinstance(items, list):
        items = []
    for position, item in enumerate(items):
        for target in pinning.targets(
            item, rules, prefix=("items", position), plain_http=options.plain_http
        ):
            source.targets.append(target)
            source.document_of.append(0)
    results = _lookup(sources, options)
    reports = _judge_all(sources, results, check=options.check)
    output = yamltext.load(source.pinned)[0]
    existing = output.get(KRM_RESULTS)
    output[KRM_RESULTS] = (list(existing) if isinstance(existing, list) else []) + [
        _krm_result(report, items) for report in reports
    ]
    stdout.write(yamltext.dump(output))
    return _status(reports)


def _krm_result(report: Report, items: Sequence[Any]) -> dict[str, Any]:
    target = report.result.target
    result: dict[str, Any] = {"message": report.text, "severity": report.severity}
    ref = target.resource
    resource_ref = {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name}
    if ref.namespace:
        resource_ref["namespace"] = ref.namespace
    result["resourceRef"] = resource_ref
    result["field"] = {"path": _field_path(target.path[2:])}
    item = items[int(target.path[1])]
    path = pinning.annotation(item, pinning.PATH_ANNOTATIONS)
    if path is not None:
        file: dict[str, Any] = {"path": path}
        index = pinning.annotation(item, pinning.INDEX_ANNOTATIONS)
        if index is not None and index.isdigit():
            file["index"] = int(index)
        result["file"] = file
    return result


def _field_path(path: Sequence[pinning.PathKey]) -> str:
    """`spec.template.spec.containers[0].image`, as KRM results write a field."""
    written = ""
    for key in path:
        written += f"[{key}]" if isinstance(key, int) else (f".{key}" if written else str(key))
    return written
