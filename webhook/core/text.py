"""Strings quoted in messages and logs: cut short when they are long, with their length.

An AdmissionReview, a flag or a registry answer can carry a string of any size; a
message names its start and how long it is, never the whole of it.
"""

from typing import Final

CLIP_AT: Final = 300
"""Characters of a string kept in a message: an image name is at most 255."""


def clipped(value: object, at: int = CLIP_AT) -> str:
    """`str(value)`, or its first `at` characters and its length."""
    text = str(value)
    return text if len(text) <= at else f"{text[:at]}… ({len(text)} characters)"


def quoted(text: str, at: int = CLIP_AT) -> str:
    """`text` quoted (`repr`), or its first `at` characters quoted and its length."""
    return repr(text) if len(text) <= at else f"{text[:at]!r}… ({len(text)} characters)"
