"""The only ruamel.yaml importer: YAML streams read with positions, and edited in place.

Manifests are read with ruamel.yaml's round-trip loader, the one that keeps where every
node was written. They are not written back through a YAML emitter: an edit replaces
the characters of one scalar in the original text and nothing else, so comments, key
order, quoting, indentation, blank lines and document markers stay byte for byte as
they were. The round-trip emitter is used only for a KRM function's ResourceList,
whose `results` are new.
"""

import dataclasses
import io
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Final

import ruamel.yaml
import ruamel.yaml.comments
import ruamel.yaml.error

from webhook import errors
from webhook.core import pinning

# The line breaks ruamel.yaml's reader counts lines by.
_LINE_BREAK: Final = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


@dataclasses.dataclass(frozen=True)
class Edit:
    """Replace the scalar written at (line, column), both from 0, holding `old` with `new`."""

    line: int
    column: int
    old: str
    new: str


def _loader() -> ruamel.yaml.YAML:
    return ruamel.yaml.YAML(typ="rt", pure=True)


def load(text: str) -> list[Any]:
    """Every document of the stream `text` (None for an empty one), or raise
    `InvalidManifest` with the line and what is wrong."""
    try:
        with warnings.catch_warnings():
            # A reused anchor is legal YAML; ruamel.yaml only warns about it.
            warnings.simplefilter("ignore", ruamel.yaml.error.ReusedAnchorWarning)
            return list(_loader().load_all(text))
    except ruamel.yaml.error.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        column = f"column {mark.column + 1}: " if mark is not None else ""
        problem = error.problem or "unreadable"
        if error.context:
            begun = error.context_mark
            since = (
                f" (from line {begun.line + 1})"
                if begun is not None and mark is not None and begun.line != mark.line
                else ""
            )
            problem = f"{error.context}{since}: {problem}"
        raise errors.InvalidManifest(line, f"{column}not valid YAML: {problem}") from None
    except ruamel.yaml.error.YAMLError as error:
        raise errors.InvalidManifest(None, f"not valid YAML: {error}") from None


def start_line(document: Any) -> int | None:
    """The line (from 1) a mapping or sequence document begins on."""
    if isinstance(document, ruamel.yaml.comments.CommentedBase):
        return int(document.lc.line) + 1
    return None


def position(document: Any, path: Sequence[pinning.PathKey]) -> tuple[int, int] | None:
    """(line, column), from 0, where the node at `path` is written, or None if unknown
    (a key that comes from a `<<` merge has no position of its own)."""
    try:
        node = document
        for key in path[:-1]:
            node = node[key]
        last = path[-1]
        if isinstance(node, ruamel.yaml.comments.CommentedMap):
            return _pair(node.lc.value(last))
        if isinstance(node, ruamel.yaml.comments.CommentedSeq) and isinstance(last, int):
            return _pair(node.lc.item(last))
    except (KeyError, IndexError, TypeError):
        return None
    return None


def _pair(raw: Any) -> tuple[int, int] | None:
    if raw is None:
        return None
    line, column = raw
    return int(line), int(column)


def apply(text: str, edits: Iterable[Edit]) -> tuple[str, list[Edit]]:
    """`text` with each edit made, and the edits that could not be made.

    An edit is made only where the text at its position spells exactly `old`, plain or
    in single or double quotes (then `new` gets the same quotes); an image written
    otherwise (a block or multi-line scalar, an alias, escapes) is left alone and given
    back, for the caller to report.
    """
    starts = [0] + [match.end() for match in _LINE_BREAK.finditer(text)]
    planned: list[tuple[int, int, str]] = []
    refused: list[Edit] = []
    for edit in edits:
        if edit.line >= len(starts):
            refused.append(edit)
            continue
        offset = starts[edit.line] + edit.column
        spelled = _spelling(text, offset, edit)
        if spelled is None:
            refused.append(edit)
            continue
        planned.append((offset, offset + len(spelled[0]), spelled[1]))
    pieces: list[str] = []
    done = 0
    for begin, end, replacement in sorted(planned):
        pieces.extend((text[done:begin], replacement))
        done = end
    pieces.append(text[done:])
    return "".join(pieces), refused


def _spelling(text: str, offset: int, edit: Edit) -> tuple[str, str] | None:
    """(the text written there, what replaces it), or None if it is not `old` on one line."""
    for quote in ("", "'", '"'):
        written = f"{quote}{edit.old}{quote}"
        if not text.startswith(written, offset):
            continue
        after = text[offset + len(written) : offset + len(written) + 1]
        # A plain scalar ends at a line break, a comment, a flow separator or the end.
        if quote or after in ("", "\n", "\r", " ", "\t", ",", "}", "]"):
            return written, f"{quote}{edit.new}{quote}"
    return None


def dump(document: Any) -> str:
    """One document, written by the round-trip emitter (comments it read are kept)."""
    stream = io.StringIO()
    emitter = _loader()
    emitter.width = 4096
    emitter.dump(document, stream)
    return stream.getvalue()
