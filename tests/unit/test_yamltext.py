"""Manifests read with positions and edited in place: only the image's characters change."""

import pytest

from webhook import errors
from webhook.pin import yamltext

POD = """\
# a comment
kind: Pod
spec:
  containers:
  - name: a
    image: nginx:1   # plain
  - {name: b, image: 'redis:7', args: [x]}
  - name: c
    image: "busybox:1"
"""


def edits_for(text: str, new: dict[str, str]) -> list[yamltext.Edit]:
    [document] = yamltext.load(text)
    found = []
    for index, container in enumerate(document["spec"]["containers"]):
        where = yamltext.position(document, ("spec", "containers", index, "image"))
        assert where is not None
        found.append(yamltext.Edit(*where, container["image"], new[container["image"]]))
    return found


def test_an_edit_replaces_only_the_scalar_keeping_its_quotes() -> None:
    new = {"nginx:1": "nginx:1@sha256:1", "redis:7": "redis@sha256:2", "busybox:1": "b@sha256:3"}
    text, refused = yamltext.apply(POD, edits_for(POD, new))
    assert refused == []
    assert text == (
        POD.replace("nginx:1   #", "nginx:1@sha256:1   #")
        .replace("'redis:7'", "'redis@sha256:2'")
        .replace('"busybox:1"', '"b@sha256:3"')
    )


def test_positions_count_lines_of_the_whole_stream() -> None:
    stream = "kind: ConfigMap\n---\n" + POD
    documents = yamltext.load(stream)
    assert yamltext.position(documents[1], ("spec", "containers", 0, "image")) == (7, 11)
    assert yamltext.start_line(documents[1]) == 4


def test_crlf_line_ends_are_kept() -> None:
    crlf = POD.replace("\n", "\r\n")
    text, refused = yamltext.apply(
        crlf, edits_for(crlf, dict.fromkeys(("nginx:1", "redis:7", "busybox:1"), "x@sha256:1"))
    )
    assert refused == []
    assert text.count("\r\n") == POD.count("\n")
    assert text.count("x@sha256:1") == 3


def test_a_block_scalar_is_given_back_rather_than_edited() -> None:
    block = "kind: Pod\nspec:\n  containers:\n  - image: >-\n      nginx:1\n"
    [document] = yamltext.load(block)
    where = yamltext.position(document, ("spec", "containers", 0, "image"))
    assert where is not None
    edit = yamltext.Edit(*where, "nginx:1", "nginx:1@sha256:1")
    assert yamltext.apply(block, [edit]) == (block, [edit])


def test_a_plain_scalar_that_only_starts_with_the_image_is_not_edited() -> None:
    edit = yamltext.Edit(0, 7, "nginx:1", "nginx:1@sha256:1")
    assert yamltext.apply("image: nginx:1.27\n", [edit]) == ("image: nginx:1.27\n", [edit])


def test_a_key_merged_from_an_anchor_has_no_position_of_its_own() -> None:
    [document] = yamltext.load("b: &b {image: x:1}\nspec:\n  containers:\n  - <<: *b\n")
    assert document["spec"]["containers"][0]["image"] == "x:1"
    assert yamltext.position(document, ("spec", "containers", 0, "image")) is None


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a: [1, 2\n", 2, "flow sequence (from line 1)"),
        ("a: b\n  c: d: e\n", 2, "mapping values are not allowed here"),
        ("a: 1\na: 2\n", 2, 'duplicate key "a"'),
        ("a: *nowhere\n", 1, "found undefined alias"),
        ("\tkind: Pod\n", 1, "found character '\\t'"),
    ],
)
def test_malformed_yaml_is_an_invalid_manifest_naming_the_line(
    text: str, line: int, words: str
) -> None:
    with pytest.raises(errors.InvalidManifest) as raised:
        yamltext.load(text)
    assert raised.value.line == line
    assert words in raised.value.problem
