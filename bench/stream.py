"""An endless stream of vegeta targets: mixed pod CREATE and UPDATE admissions.

Every object has its own uid (kopf keeps per-uid memories for non-CREATE
admissions, so distinct uids are what would make a leak show). The mix, per 4
admissions: 2 CREATEs of a 3-container pod, 1 UPDATE that only changes a label
(no image examined), 1 UPDATE that moves one container to another tag. All tags
come from a small warm set, so the cache does not grow.

    python -m bench.stream --url https://127.0.0.1:8443/mutate-pods [--count N]
"""

import argparse
import contextlib
import sys
import uuid

from bench import harness, reviews

REPOSITORIES = ("bench/mix0", "bench/mix1", "bench/mix2")
TAGS = tuple(f"v{n}" for n in range(10))


def warm_images() -> list[str]:
    """Every image the stream uses (to resolve once before it starts)."""
    return [reviews.image(r, t) for r in REPOSITORIES for t in TAGS]


def targets(url: str, count: int | None) -> None:
    n = 0
    out = sys.stdout
    while count is None or n < count:
        images = [
            reviews.image(repository, TAGS[(n + i) % len(TAGS)])
            for i, repository in enumerate(REPOSITORIES)
        ]
        kind = n % 4
        if kind in (0, 1):
            review = reviews.create(f"mix-{n}", images)
        elif kind == 2:
            review = reviews.update(f"mix-{n}", images, images, uid=str(uuid.uuid4()))
        else:
            moved = [*images[:2], reviews.image(REPOSITORIES[2], TAGS[(n + 5) % len(TAGS)])]
            review = reviews.update(f"mix-{n}", images, moved, uid=str(uuid.uuid4()))
        out.write(harness.target(url, review) + "\n")
        n += 1
    out.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=None)
    arguments = parser.parse_args()
    with contextlib.suppress(BrokenPipeError):  # vegeta stopped reading: the run is over
        targets(arguments.url, arguments.count)


if __name__ == "__main__":
    main()
