"""The admission server refuses what no handler should answer, before kopf sees it.

These requests never reach the framework, so the framework function here only
records that it was (not) called.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from webhook import names
from webhook.serving import server


class RecordingFn:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str | None, Any]] = []
        self.delay = delay

    async def __call__(self, request: Any, *, webhook: str | None = None, **_: Any) -> Any:
        self.calls.append((webhook, request))
        await asyncio.sleep(self.delay)
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": request["request"]["uid"], "allowed": True},
        }


def review(
    *,
    resource: str = "pods",
    group: str = "",
    subresource: str | None = None,
    operation: str = "CREATE",
    namespace: str = "team-a",
) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    request: dict[str, Any] = {
        "uid": "0d7b4c44-1b4e-4b8e-9d6e-3f0a7f9c0001",
        "kind": {"group": group, "version": "v1", "kind": "Pod"},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "operation": operation,
        "namespace": namespace,
        "userInfo": {"username": "alice"},
        "object": pod if operation != "DELETE" else None,
        "oldObject": pod if operation in ("UPDATE", "DELETE") else None,
    }
    if subresource:
        request["subResource"] = subresource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, RecordingFn, server.AdmissionServer]]:
    fn = RecordingFn()
    admission_server = server.AdmissionServer(
        address="127.0.0.1",
        port=0,
        certfile=None,
        keyfile=None,
        answer_within=30.0,
        max_body_bytes=64 * 1024,
        shed_lag=0,  # the client shares this event loop: its work is not the server's lag
    )
    configs = admission_server(fn)
    await configs.__anext__()
    yield f"http://127.0.0.1:{admission_server.bound_port}", fn, admission_server
    await configs.aclose()


async def post(url: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}  # as the apiserver sends it
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=headers) as response,
    ):
        return response.status, json.loads(await response.read())


async def test_unknown_path_is_refused(served: Any) -> None:
    url, fn, _ = served
    status, answer = await post(f"{url}/mutate-everything", review())
    assert status == 404
    assert answer["response"]["allowed"] is False
    assert "no admission handler at /mutate-everything" in answer["response"]["status"]["message"]
    assert fn.calls == []


async def test_root_path_is_refused(served: Any) -> None:
    url, fn, _ = served
    status, answer = await post(f"{url}/", review())
    assert status == 404
    assert answer["response"]["allowed"] is False
    assert fn.calls == []


async def test_get_is_refused(served: Any) -> None:
    url, _, _ = served
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/{names.MUTATE_PODS}") as response,
    ):
        assert response.status == 405


async def test_body_that_is_not_json_gets_a_refusal_review(served: Any) -> None:
    url, fn, _ = served
    status, answer = await post(f"{url}/{names.MUTATE_PODS}", b"{not json")
    assert status == 400
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["allowed"] is False
    assert "not valid JSON" in answer["response"]["status"]["message"]
    assert fn.calls == []


async def test_wrong_kind_is_named_in_the_refusal(served: Any) -> None:
    url, _, _ = served
    body = review()
    body["kind"] = "ConversionReview"
    status, answer = await post(f"{url}/{names.MUTATE_PODS}", body)
    assert status == 400
    assert "kind must be 'AdmissionReview'" in answer["response"]["status"]["message"]


async def test_refusal_carries_the_request_uid_when_it_is_known(served: Any) -> None:
    url, _, _ = served
    body = review()
    del body["request"]["userInfo"]
    _, answer = await post(f"{url}/{names.MUTATE_PODS}", body)
    assert answer["response"]["uid"] == body["request"]["uid"]
    assert "userInfo" in answer["response"]["status"]["message"]


async def test_body_over_the_limit_is_refused_with_413(served: Any) -> None:
    url, fn, _ = served
    body = review()
    body["request"]["object"]["metadata"]["annotations"] = {"x": "y" * (70 * 1024)}
    status, answer = await post(f"{url}/{names.MUTATE_PODS}", body)
    assert status == 413
    assert answer["response"]["allowed"] is False
    assert fn.calls == []


async def test_resource_sent_to_another_handlers_path_is_denied(served: Any) -> None:
    url, fn, _ = served
    body = review(resource="deployments", group="apps")
    status, answer = await post(f"{url}/{names.MUTATE_PODS}", body)
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert "does not handle deployments.apps" in answer["response"]["status"]["message"]
    assert fn.calls == []


async def test_ephemeral_subresource_on_the_pods_path_is_denied(served: Any) -> None:
    url, fn, _ = served
    body = review(subresource="ephemeralcontainers", operation="UPDATE")
    _, answer = await post(f"{url}/{names.MUTATE_PODS}", body)
    assert answer["response"]["allowed"] is False
    assert "pods.core/ephemeralcontainers" in answer["response"]["status"]["message"]
    assert fn.calls == []


async def test_delete_is_allowed_without_running_a_handler(served: Any) -> None:
    url, fn, _ = served
    body = review(operation="DELETE")
    status, answer = await post(f"{url}/{names.VALIDATE_PODS}", body)
    assert status == 200
    assert answer["response"] == {"uid": body["request"]["uid"], "allowed": True}
    assert fn.calls == []


async def test_request_namespace_is_filled_into_the_object_for_handlers(served: Any) -> None:
    url, fn, _ = served
    status, answer = await post(f"{url}/{names.MUTATE_PODS}", review(namespace="team-b"))
    assert status == 200
    assert answer["response"]["allowed"] is True
    [(webhook, request)] = fn.calls
    assert webhook == names.MUTATE_PODS
    assert request["request"]["object"]["metadata"]["namespace"] == "team-b"


async def test_handler_that_does_not_answer_in_time_gets_a_denial() -> None:
    fn = RecordingFn(delay=5.0)
    admission_server = server.AdmissionServer(
        address="127.0.0.1", port=0, certfile=None, keyfile=None, answer_within=0.2, shed_lag=0
    )
    configs = admission_server(fn)
    await configs.__anext__()
    try:
        status, answer = await post(
            f"http://127.0.0.1:{admission_server.bound_port}/{names.VALIDATE_PODS}", review()
        )
    finally:
        await configs.aclose()
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 504
