"""The AdmissionReview wire format: checking requests before any handler sees them.

Malformed reviews are answered here, with a message that says what is wrong,
instead of surfacing as a traceback from deep inside the framework.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, Literal, NotRequired, TypedDict

from webhook import errors

API_VERSION: Final = "admission.k8s.io/v1"
KIND: Final = "AdmissionReview"
OPERATIONS: Final = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})


class Status(TypedDict):
    code: int
    message: str


class ResponsePayload(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[Status]
    warnings: NotRequired[list[str]]
    patch: NotRequired[str]
    patchType: NotRequired[Literal["JSONPatch"]]


class Response(TypedDict):
    apiVersion: str
    kind: str
    response: ResponsePayload


@dataclasses.dataclass(frozen=True)
class Request:
    """The fields of a checked AdmissionReview request that routing needs."""

    uid: str
    group: str
    resource: str
    subresource: str | None
    operation: str
    namespace: str


def check(raw: Any) -> Request:
    """Check the shape of an AdmissionReview request, or raise `errors.InvalidReview`."""
    if not isinstance(raw, Mapping):
        raise errors.InvalidReview("the body must be a JSON object (an AdmissionReview)")
    if raw.get("kind") != KIND:
        raise errors.InvalidReview(f"kind must be {KIND!r}, not {raw.get('kind')!r}")
    if raw.get("apiVersion") != API_VERSION:
        raise errors.InvalidReview(
            f"apiVersion must be {API_VERSION!r}, not {raw.get('apiVersion')!r}"
        )
    request = raw.get("request")
    if not isinstance(request, Mapping):
        raise errors.InvalidReview("request must be an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise errors.InvalidReview("request.uid must be a non-empty string")
    resource = request.get("resource")
    if not isinstance(resource, Mapping) or not all(
        isinstance(resource.get(key), str) for key in ("group", "version", "resource")
    ):
        raise errors.InvalidReview(
            "request.resource must have string group, version and resource", uid
        )
    kind = request.get("kind")
    if not isinstance(kind, Mapping) or not isinstance(kind.get("kind"), str):
        raise errors.InvalidReview("request.kind must have a string kind", uid)
    operation = request.get("operation")
    if not isinstance(operation, str) or operation not in OPERATIONS:
        raise errors.InvalidReview(f"request.operation must be one of {sorted(OPERATIONS)}", uid)
    if not isinstance(request.get("userInfo"), Mapping):
        raise errors.InvalidReview("request.userInfo must be an object", uid)
    subresource = request.get("subResource")
    if subresource is not None and not isinstance(subresource, str):
        raise errors.InvalidReview("request.subResource must be a string", uid)
    namespace = request.get("namespace", "")
    if not isinstance(namespace, str):
        raise errors.InvalidReview("request.namespace must be a string", uid)
    for field in ("object", "oldObject"):
        value = request.get(field)
        if value is not None and not isinstance(value, Mapping):
            raise errors.InvalidReview(f"request.{field} must be an object or null", uid)
    if operation in ("CREATE", "UPDATE") and request.get("object") is None:
        raise errors.InvalidReview(f"request.object is required for {operation}", uid)
    if operation == "UPDATE" and request.get("oldObject") is None:
        raise errors.InvalidReview("request.oldObject is required for UPDATE", uid)
    if request.get("object") is None and request.get("oldObject") is None:
        raise errors.InvalidReview("request.object or request.oldObject is required", uid)
    dry_run = request.get("dryRun", False)
    if dry_run is not None and not isinstance(dry_run, bool):
        raise errors.InvalidReview("request.dryRun must be a boolean", uid)
    return Request(
        uid=uid,
        group=resource["group"],
        resource=resource["resource"],
        subresource=subresource or None,
        operation=operation,
        namespace=namespace,
    )


def refusal(uid: str, code: int, message: str) -> Response:
    """A well-formed AdmissionReview answer that does not allow the request."""
    return Response(
        apiVersion=API_VERSION,
        kind=KIND,
        response=ResponsePayload(uid=uid, allowed=False, status=Status(code=code, message=message)),
    )
