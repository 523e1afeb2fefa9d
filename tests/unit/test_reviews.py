"""The AdmissionReview wire format: malformed requests are refused with a precise message."""

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import errors
from webhook.serving import reviews

UID = "705ab4f5-6393-11e8-b7cc-42010a800002"
_ABSENT = object()
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
REQUEST_FIELDS = st.sampled_from(
    [
        "uid",
        "kind",
        "resource",
        "subResource",
        "namespace",
        "operation",
        "userInfo",
        "object",
        "oldObject",
        "dryRun",
    ]
)


def body(**request_changes: Any) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}
    request: dict[str, Any] = {
        "uid": UID,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "name": "p",
        "namespace": "shop",
        "operation": "CREATE",
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": pod,
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    for key, value in request_changes.items():
        if value is _ABSENT:
            request.pop(key, None)
        else:
            request[key] = value
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def refused(raw: Any) -> errors.InvalidReview:
    with pytest.raises(errors.InvalidReview) as caught:
        reviews.check(raw)
    return caught.value


# Well-formed requests


def test_create_of_a_pod_gives_what_routing_needs() -> None:
    assert reviews.check(body()) == reviews.Request(
        uid=UID,
        group="",
        resource="pods",
        subresource=None,
        operation="CREATE",
        namespace="shop",
    )


def test_ephemeral_containers_subresource_is_kept() -> None:
    pod = body()["request"]["object"]
    raw = body(subResource="ephemeralcontainers", operation="UPDATE", oldObject=pod)
    assert reviews.check(raw).subresource == "ephemeralcontainers"


def test_empty_subresource_is_no_subresource() -> None:
    assert reviews.check(body(subResource="")).subresource is None


def test_workload_group_is_kept() -> None:
    resource = {"group": "apps", "version": "v1", "resource": "deployments"}
    request = reviews.check(body(resource=resource))
    assert (request.group, request.resource) == ("apps", "deployments")


def test_cluster_scoped_request_has_an_empty_namespace() -> None:
    assert reviews.check(body(namespace=_ABSENT)).namespace == ""


def test_update_with_both_objects_is_accepted() -> None:
    pod = body()["request"]["object"]
    assert reviews.check(body(operation="UPDATE", oldObject=pod)).operation == "UPDATE"


def test_delete_with_only_the_old_object_is_accepted() -> None:
    pod = body()["request"]["object"]
    assert reviews.check(body(operation="DELETE", object=None, oldObject=pod)).operation == "DELETE"


@pytest.mark.parametrize("dry_run", [True, False, None])
def test_dry_run_may_be_a_boolean_or_null(dry_run: Any) -> None:
    reviews.check(body(dryRun=dry_run))


def test_dry_run_may_be_absent() -> None:
    reviews.check(body(dryRun=_ABSENT))


# Malformed bodies


@pytest.mark.parametrize("raw", [None, [], "AdmissionReview", 42])
def test_body_that_is_not_an_object_is_refused(raw: Any) -> None:
    assert str(refused(raw)) == "the body must be a JSON object (an AdmissionReview)"


def test_wrong_kind_is_refused() -> None:
    raw = body() | {"kind": "Pod"}
    assert str(refused(raw)) == "kind must be 'AdmissionReview', not 'Pod'"


def test_missing_kind_is_refused() -> None:
    raw = body()
    del raw["kind"]
    assert str(refused(raw)) == "kind must be 'AdmissionReview', not None"


def test_old_api_version_is_refused() -> None:
    raw = body() | {"apiVersion": "admission.k8s.io/v1beta1"}
    assert str(refused(raw)) == (
        "apiVersion must be 'admission.k8s.io/v1', not 'admission.k8s.io/v1beta1'"
    )


@pytest.mark.parametrize("request_", [None, [], "request"])
def test_request_that_is_not_an_object_is_refused(request_: Any) -> None:
    raw = body() | {"request": request_}
    assert str(refused(raw)) == "request must be an object"


@pytest.mark.parametrize("uid", [_ABSENT, "", None, 42])
def test_request_without_a_uid_is_refused_without_one(uid: Any) -> None:
    error = refused(body(uid=uid))
    assert (str(error), error.uid) == ("request.uid must be a non-empty string", "")


@pytest.mark.parametrize("missing", ["group", "version", "resource"])
def test_resource_missing_a_field_is_refused_with_the_uid(missing: str) -> None:
    resource = {"group": "", "version": "v1", "resource": "pods"}
    del resource[missing]
    error = refused(body(resource=resource))
    assert (str(error), error.uid) == (
        "request.resource must have string group, version and resource",
        UID,
    )


@pytest.mark.parametrize(
    "resource", [_ABSENT, None, "pods", {"group": None, "version": "v1", "resource": "pods"}]
)
def test_resource_that_is_not_an_object_of_strings_is_refused(resource: Any) -> None:
    assert str(refused(body(resource=resource))) == (
        "request.resource must have string group, version and resource"
    )


@pytest.mark.parametrize("kind", [_ABSENT, "Pod", {"group": "", "version": "v1"}])
def test_request_kind_without_a_string_kind_is_refused(kind: Any) -> None:
    assert str(refused(body(kind=kind))) == "request.kind must have a string kind"


@pytest.mark.parametrize("operation", [_ABSENT, "PATCH", "create", None, ["CREATE"], {"op": 1}])
def test_unknown_operation_is_refused(operation: Any) -> None:
    error = refused(body(operation=operation))
    assert (str(error), error.uid) == (
        "request.operation must be one of ['CONNECT', 'CREATE', 'DELETE', 'UPDATE']",
        UID,
    )


@pytest.mark.parametrize("user_info", [_ABSENT, None, "alice"])
def test_request_without_user_info_is_refused(user_info: Any) -> None:
    assert str(refused(body(userInfo=user_info))) == "request.userInfo must be an object"


def test_subresource_that_is_not_a_string_is_refused() -> None:
    assert str(refused(body(subResource=["status"]))) == "request.subResource must be a string"


def test_namespace_that_is_not_a_string_is_refused() -> None:
    assert str(refused(body(namespace=None))) == "request.namespace must be a string"


@pytest.mark.parametrize("field", ["object", "oldObject"])
def test_object_that_is_not_an_object_is_refused(field: str) -> None:
    assert str(refused(body(**{field: ["pod"]}))) == f"request.{field} must be an object or null"


def test_create_without_object_is_refused() -> None:
    assert str(refused(body(object=None))) == "request.object is required for CREATE"


def test_update_without_object_is_refused() -> None:
    pod = body()["request"]["object"]
    raw = body(operation="UPDATE", object=None, oldObject=pod)
    assert str(refused(raw)) == "request.object is required for UPDATE"


def test_update_without_old_object_is_refused() -> None:
    assert str(refused(body(operation="UPDATE"))) == "request.oldObject is required for UPDATE"


def test_update_with_an_absent_old_object_is_refused() -> None:
    raw = body(operation="UPDATE", oldObject=_ABSENT)
    assert str(refused(raw)) == "request.oldObject is required for UPDATE"


def test_delete_without_any_object_is_refused() -> None:
    raw = body(operation="DELETE", object=None, oldObject=None)
    assert str(refused(raw)) == "request.object or request.oldObject is required"


@pytest.mark.parametrize("dry_run", ["true", 1, 0, "false"])
def test_dry_run_that_is_not_a_boolean_is_refused(dry_run: Any) -> None:
    error = refused(body(dryRun=dry_run))
    assert (str(error), error.uid) == ("request.dryRun must be a boolean", UID)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_arbitrary_json_is_refused_only_as_an_invalid_review(raw: Any) -> None:
    with pytest.raises(errors.InvalidReview):
        reviews.check(raw)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(REQUEST_FIELDS, JSON, min_size=1, max_size=4))
def test_any_field_of_any_shape_never_raises_anything_but_invalid_review(changes: Any) -> None:
    with contextlib.suppress(errors.InvalidReview):
        reviews.check(body(**changes))


# Refusals


def test_refusal_is_a_well_formed_admission_review_that_does_not_allow() -> None:
    assert reviews.refusal(UID, 400, "request.uid must be a non-empty string") == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": UID,
            "allowed": False,
            "status": {"code": 400, "message": "request.uid must be a non-empty string"},
        },
    }


def test_refusal_of_a_body_without_uid_answers_with_an_empty_uid() -> None:
    assert reviews.refusal("", 400, "x")["response"]["uid"] == ""
