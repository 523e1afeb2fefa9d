"""CPU per warm OCI lookup: the urllib3 transport against the hand-written one it replaced.

    .venv/bin/python -m bench.oci_lookup     # ~1 min; needs docker-registry (Debian package)

A real CNCF distribution registry (Debian's `docker-registry`) on loopback, over HTTPS
with its own CA and distribution's token authentication, holds one image. Each client
first makes one lookup (connections and the token are then warm), then `LOOKUPS`
lookups of that tag are timed with `time.process_time()` (CPU of this process: the
client's work, not the registry's). The two clients alternate for `ROUNDS` rounds in
one process; the medians and their ratio are written to `bench/results/oci_lookup.json`
and `bench/OCI_LOOKUP.md`.

The "before" client is `webhook/registries/oci.py` as it was at commit 60e6e0f, read
from git and loaded beside the current package (with the one helper it called under
its old name).
"""

import json
import platform
import statistics
import subprocess
import time
import types
from pathlib import Path
from typing import Any, Final

from tests.support import oci_registry
from webhook.core import outcomes
from webhook.registries import retries
from webhook.registries.oci import client as current

BEFORE_COMMIT: Final = "60e6e0f"
ROUNDS: Final = 7
LOOKUPS: Final = 300
HERE: Final = Path(__file__).parent


def before_module() -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{BEFORE_COMMIT}:webhook/registries/oci.py"],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    retries.pause_or_give_up = retries._pause_or_give_up  # type: ignore[attr-defined]
    module = types.ModuleType("oci_before")
    exec(compile(source, f"{BEFORE_COMMIT}:webhook/registries/oci.py", "exec"), module.__dict__)
    return module


def cpu_per_lookup(client: Any, query: outcomes.Query) -> float:
    started = time.process_time()
    for _ in range(LOOKUPS):
        answer = client.lookup(query.repository, [query], timeout=10.0)[query]
        assert isinstance(answer, outcomes.Found), answer
    return (time.process_time() - started) / LOOKUPS


def main() -> None:
    old = before_module()
    with oci_registry.running_registry(secured=True) as registry:
        registry.push_image("bench/app", "v1", seed="bench")
        query = outcomes.Query(outcomes.Repository(registry.host, "bench/app"), tag="v1")
        ca_file = str(registry.ca_file)
        clients = {
            "before (hand-written http.client pool)": old.OciClient(ca_file=ca_file),
            "now (urllib3 pool)": current.OciClient(ca_file=ca_file),
        }
        for client in clients.values():
            assert isinstance(
                client.lookup(query.repository, [query], timeout=10.0)[query], outcomes.Found
            )
        runs: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(ROUNDS):
            for name, client in clients.items():
                runs[name].append(cpu_per_lookup(client, query))
        for client in clients.values():
            client.close()
    medians = {name: statistics.median(values) for name, values in runs.items()}
    before, now = medians.values()
    result = {
        "command": "python -m bench.oci_lookup",
        "when": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "rounds": ROUNDS,
        "lookups_per_round": LOOKUPS,
        "cpu_seconds_per_lookup": runs,
        "medians": medians,
        "ratio_now_to_before": now / before,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "oci_lookup.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# CPU per warm OCI lookup",
        "",
        f"`{result['command']}` ({result['when']}, Python {result['python']}): a real"
        " registry over HTTPS with token authentication, connections and token warm;"
        f" medians of {ROUNDS} alternating rounds of {LOOKUPS} lookups, one process."
        " Raw numbers: `results/oci_lookup.json`.",
        "",
        "| client | CPU per lookup |",
        "|---|---|",
        *(f"| {name} | {value * 1e6:.0f} µs |" for name, value in medians.items()),
        "",
        f"Now / before: {now / before:.2f}.",
        "",
    ]
    (HERE / "OCI_LOOKUP.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
