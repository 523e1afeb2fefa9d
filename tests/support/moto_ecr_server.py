"""`python -m moto.server`, with ECR's BatchGetImage failures naming the image asked for.

moto reports a missing image as `{"imageTag": "null"}` when it was asked by digest;
ECR echoes the requested `imageId` (`{"imageDigest": "sha256:…"}`), which is how a
client tells which of its image ids is missing. Only that is changed here.
"""

import sys
from typing import Any

from moto import server
from moto.ecr import models


def _echoing_failures(batch_get_image: Any) -> Any:
    def batch_get_image_as_ecr(
        self: Any,
        repository_name: str,
        registry_id: str | None = None,
        image_ids: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        response: dict[str, Any] = batch_get_image(self, repository_name, registry_id, image_ids)
        missing = [
            image_id
            for image_id in image_ids or []
            if not any(_answers(image, image_id) for image in response["images"])
        ]
        if len(missing) == len(response["failures"]):
            for failure, image_id in zip(response["failures"], missing, strict=True):
                failure["imageId"] = dict(image_id)
        return response

    return batch_get_image_as_ecr


def _answers(image: Any, image_id: dict[str, Any]) -> bool:
    if "imageDigest" in image_id and image.get_image_digest() == image_id["imageDigest"]:
        return True
    return "imageTag" in image_id and image_id["imageTag"] in image.image_tags


models.ECRBackend.batch_get_image = _echoing_failures(models.ECRBackend.batch_get_image)  # type: ignore[method-assign]

if __name__ == "__main__":
    server.main(sys.argv[1:])
