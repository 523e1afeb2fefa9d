"""The container walker: every image of a pod or a pod template, with its JSON pointer."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.core import containers

WORKLOAD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

# Keys that make random objects look like pod specs often enough to reach every branch.
SHAPE_KEYS = [
    "spec",
    "template",
    "jobTemplate",
    "metadata",
    "labels",
    "containers",
    "initContainers",
    "ephemeralContainers",
    "name",
    "image",
]


def nest(path: tuple[str, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    node = leaf
    for key in reversed(path):
        node = {key: node}
    return node


def workload(
    kind: str, spec: dict[str, Any], labels: dict[str, Any] | None = None
) -> dict[str, Any]:
    template: dict[str, Any] = {"spec": spec}
    if labels is not None:
        template["metadata"] = {"labels": labels}
    obj = nest(WORKLOAD_TEMPLATE_PATHS[kind], template)
    obj.update(kind=kind, metadata={"name": "w", "labels": {"owner": "workload"}})
    return obj


def pod(spec: Any, labels: Any = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p"}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def triples(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c.container, c.image, c.pointer) for c in containers.walk(obj)]


def test_pod_yields_init_then_app_then_ephemeral_containers() -> None:
    obj = pod(
        {
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
            "containers": [{"name": "app", "image": "app:v1"}, {"name": "side", "image": "s:v2"}],
            "initContainers": [{"name": "setup", "image": "setup:v3"}],
        }
    )
    assert triples(obj) == [
        ("setup", "setup:v3", "/spec/initContainers/0/image"),
        ("app", "app:v1", "/spec/containers/0/image"),
        ("side", "s:v2", "/spec/containers/1/image"),
        ("debug", "busybox", "/spec/ephemeralContainers/0/image"),
    ]


def test_container_image_knows_its_list_and_index() -> None:
    [image] = containers.walk(pod({"containers": [{}, {"name": "web", "image": "web:v1"}]}))
    assert (image.list_name, image.index) == ("containers", 1)


def test_label_names_list_and_container() -> None:
    [image] = containers.walk(pod({"initContainers": [{"name": "setup", "image": "x"}]}))
    assert image.label == "initContainers[setup]"


def test_container_without_name_is_named_by_its_index() -> None:
    [_, image] = containers.walk(pod({"containers": [{"image": "a"}, {"image": "b"}]}))
    assert (image.container, image.label) == ("1", "containers[1]")


@pytest.mark.parametrize("kind", sorted(WORKLOAD_TEMPLATE_PATHS))
def test_workload_yields_the_containers_of_its_pod_template(kind: str) -> None:
    obj = workload(
        kind,
        {
            "initContainers": [{"name": "setup", "image": "setup:v1"}],
            "containers": [{"name": "app", "image": "app:v1"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
        },
    )
    prefix = "".join(f"/{key}" for key in WORKLOAD_TEMPLATE_PATHS[kind]) + "/spec"
    assert triples(obj) == [
        ("setup", "setup:v1", f"{prefix}/initContainers/0/image"),
        ("app", "app:v1", f"{prefix}/containers/0/image"),
        ("debug", "busybox", f"{prefix}/ephemeralContainers/0/image"),
    ]


def test_cronjob_pointers_go_through_the_job_template() -> None:
    obj = workload(
        "CronJob", {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}
    )
    assert [c.pointer for c in containers.walk(obj)] == [
        "/spec/jobTemplate/spec/template/spec/containers/0/image",
        "/spec/jobTemplate/spec/template/spec/containers/1/image",
    ]


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("Pod", ("spec",)),
        ("Deployment", ("spec", "template", "spec")),
        ("CronJob", ("spec", "jobTemplate", "spec", "template", "spec")),
    ],
)
def test_pod_spec_path_names_where_the_pod_spec_lives(kind: str, path: tuple[str, ...]) -> None:
    assert containers.pod_spec_path(kind) == path


@pytest.mark.parametrize("kind", ["ConfigMap", "PodTemplate", "", "pod"])
def test_kinds_without_a_pod_spec_have_no_path(kind: str) -> None:
    assert containers.pod_spec_path(kind) is None


def test_object_of_another_kind_yields_nothing() -> None:
    obj = {"kind": "ConfigMap", "spec": {"containers": [{"name": "a", "image": "x"}]}}
    assert list(containers.walk(obj)) == []


def test_object_without_kind_yields_nothing() -> None:
    assert list(containers.walk({"spec": {"containers": [{"name": "a", "image": "x"}]}})) == []


@pytest.mark.parametrize("spec", [None, "spec", ["containers"], 42])
def test_pod_spec_that_is_not_an_object_yields_nothing(spec: Any) -> None:
    assert list(containers.walk(pod(spec))) == []


def test_workload_without_template_yields_nothing() -> None:
    assert list(containers.walk({"kind": "Deployment", "spec": {"replicas": 2}})) == []


def test_workload_with_template_that_is_not_an_object_yields_nothing() -> None:
    assert list(containers.walk({"kind": "Deployment", "spec": {"template": "nope"}})) == []


@pytest.mark.parametrize("listing", [None, {"name": "a", "image": "x"}, "x", 3])
def test_container_list_that_is_not_a_list_is_skipped(listing: Any) -> None:
    obj = pod({"initContainers": listing, "containers": [{"name": "app", "image": "app"}]})
    assert triples(obj) == [("app", "app", "/spec/containers/0/image")]


def test_container_that_is_not_an_object_is_skipped_and_keeps_later_indexes() -> None:
    obj = pod({"containers": ["app:v1", None, {"name": "web", "image": "web"}]})
    assert triples(obj) == [("web", "web", "/spec/containers/2/image")]


@pytest.mark.parametrize("image", [None, "", 42, ["app:v1"], {"name": "x"}])
def test_container_without_a_string_image_is_skipped(image: Any) -> None:
    obj = pod({"containers": [{"name": "a", "image": image}, {"name": "b", "image": "b"}]})
    assert triples(obj) == [("b", "b", "/spec/containers/1/image")]


def test_container_without_image_field_is_skipped() -> None:
    assert list(containers.walk(pod({"containers": [{"name": "a"}]}))) == []


def test_pod_labels_are_the_pod_metadata_labels() -> None:
    assert containers.pod_labels(pod({}, labels={"app": "web"})) == {"app": "web"}


@pytest.mark.parametrize("kind", sorted(WORKLOAD_TEMPLATE_PATHS))
def test_workload_pod_labels_are_the_template_labels_not_its_own(kind: str) -> None:
    obj = workload(kind, {"containers": []}, labels={"app": "web"})
    assert containers.pod_labels(obj) == {"app": "web"}


def test_workload_without_template_labels_has_none() -> None:
    assert containers.pod_labels(workload("Deployment", {"containers": []})) == {}


def test_pod_without_labels_has_none() -> None:
    assert containers.pod_labels(pod({})) == {}


@pytest.mark.parametrize("labels", [["app"], "app=web", 3])
def test_labels_that_are_not_a_map_count_as_none(labels: Any) -> None:
    assert containers.pod_labels(pod({}, labels=labels)) == {}


def test_pod_with_metadata_that_is_not_an_object_has_no_labels() -> None:
    assert containers.pod_labels({"kind": "Pod", "metadata": "x"}) == {}


def test_label_values_are_read_as_strings() -> None:
    assert containers.pod_labels(pod({}, labels={"tier": 1, "canary": True})) == {
        "tier": "1",
        "canary": "True",
    }


def test_object_of_unknown_kind_has_its_own_labels() -> None:
    obj = {"kind": "ConfigMap", "metadata": {"labels": {"a": "b"}}}
    assert containers.pod_labels(obj) == {"a": "b"}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(SHAPE_KEYS), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([*WORKLOAD_TEMPLATE_PATHS, "Pod"]), JSON, JSON)
def test_any_object_shape_is_walked_without_error(kind: str, spec: Any, metadata: Any) -> None:
    obj = {"kind": kind, "metadata": metadata, "spec": spec}
    for image in containers.walk(obj):
        assert isinstance(image.image, str)
        assert image.image
        assert image.pointer.endswith(f"/{image.list_name}/{image.index}/image")
    containers.pod_labels(obj)
