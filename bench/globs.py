"""Policy glob matching: the linear-time matcher against the backtracking regex it replaced.

    .venv/bin/python -m bench.globs          # ~1 min; writes bench/results/globs.json
                                             # and bench/GLOBS.md

Both run in this process on the same inputs, interleaved, so their ratio holds on a
noisy machine. The regex is the translation policies used before (`**` to `.*`, `*`
to `[^/]*`, `?` to `[^/]`, `re.IGNORECASE`); where it backtracks for longer than
`REGEX_GIVE_UP` seconds it runs in a child process that is stopped, and the table says
so instead of a time.
"""

import json
import multiprocessing
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Final

from tests.support.glob_regex import regex_of
from webhook.core import policies

ROUNDS: Final = 7
REGEX_GIVE_UP: Final = 20.0
ECR: Final = "111122223333.dkr.ecr.us-east-1.amazonaws.com"
HERE: Final = Path(__file__).parent

CASES: Final = [
    (
        "plausible production glob, 197-character name that matches",
        "*.dkr.ecr.*.amazonaws.com/*-*-*-*-*/**",
        f"{ECR}/{'team-' * 20}x/{'a-b-c/' * 15}svc"[:197],
    ),
    (
        "plausible production glob, 197-character name that misses",
        "*.dkr.ecr.*.amazonaws.com/*-*-*-*-*/**",
        f"{ECR}/{'t' * 150}",
    ),
    (
        "plausible production glob, 197-character one-segment name full of '-' (misses)",
        "*.dkr.ecr.*.amazonaws.com/*-*-*-*-*/**",
        f"{ECR}/{'a-' * 80}"[:197].rstrip("-"),
    ),
    (
        "20 x '*ab' then '*c', a 200-character name ending in 'c' (misses)",
        "*ab" * 20 + "*c",
        ("ab" * 5 + "a" * 189 + "c"),
    ),
    ("12 x '*a' then 'b', 40 'a's (misses)", "*a" * 12 + "b", "a" * 40),
    ("30 x '*a' then 'b', 200 'a's (misses)", "*a" * 30 + "b", "a" * 200),
    ("30 x '**a' then 'b', 200 'a's (misses)", "**a" * 30 + "b", "a" * 200),
    (
        "the chart's default ECR glob, a typical image",
        "*.dkr.ecr.*.amazonaws.com/**",
        f"{ECR}/shop/api",
    ),
]


def _time_regex(pattern: str, name: str, out: Any) -> None:
    compiled = regex_of(pattern)
    started = time.perf_counter()
    compiled.fullmatch(name)
    out.put(time.perf_counter() - started)


def regex_seconds(pattern: str, name: str) -> float | None:
    """One regex match, in a child stopped after REGEX_GIVE_UP seconds (None then)."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_time_regex, args=(pattern, name, out))
    child.start()
    child.join(REGEX_GIVE_UP)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return float(out.get())


def matcher_seconds(pattern: str, name: str) -> float:
    glob = policies.compile_glob(pattern)
    glob.matches(name)  # what a first match prepares is not counted
    repeats = 1000
    started = time.perf_counter()
    for _ in range(repeats):
        glob.matches(name)
    return (time.perf_counter() - started) / repeats


def policy_load_seconds(count: int) -> tuple[float, float]:
    """Parsing a policy of `count` globs, and its first covers() (building the index)."""
    spec = {"images": [f"{ECR}/team-{index}/**" for index in range(count)]}
    policies.compile_glob.cache_clear()
    started = time.perf_counter()
    policy = policies.parse("bench", 1, spec)
    parsed = time.perf_counter() - started
    started = time.perf_counter()
    policy.covers(f"{ECR}/team-{count - 1}/svc")
    return parsed, time.perf_counter() - started


def main() -> None:
    rows = []
    for title, pattern, name in CASES:
        regex_runs: list[float | None] = []
        matcher_runs: list[float] = []
        for _ in range(ROUNDS):
            regex_runs.append(regex_seconds(pattern, name))
            matcher_runs.append(matcher_seconds(pattern, name))
            if regex_runs[-1] is None:
                break  # one give-up says enough; do not spend ROUNDS x REGEX_GIVE_UP
        finished = [run for run in regex_runs if run is not None]
        regex = statistics.median(finished) if len(finished) == len(regex_runs) else None
        matcher = statistics.median(matcher_runs)
        rows.append(
            {
                "case": title,
                "pattern": pattern,
                "name_length": len(name),
                "regex_seconds": regex,
                "matcher_seconds": matcher,
                "agree": regex is None
                or (regex_of(pattern).fullmatch(name) is not None)
                == policies.compile_glob(pattern).matches(name),
            }
        )
    parsed, first_covers = policy_load_seconds(policies.GLOBS_MAX_ITEMS)
    result = {
        "command": "python -m bench.globs",
        "when": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "rounds": ROUNDS,
        "cases": rows,
        "policy_of_20000_globs": {"parse_seconds": parsed, "first_covers_seconds": first_covers},
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "globs.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Policy globs: linear matcher vs the backtracking regex",
        "",
        f"`{result['command']}` ({result['when']}, Python {result['python']}); medians of"
        f" {ROUNDS} interleaved rounds, both in one process. Raw numbers:"
        " `results/globs.json`.",
        "",
        "| case | regex (before) | matcher (now) | ratio |",
        "|---|---|---|---|",
    ]
    for row in rows:
        matcher_text = f"{row['matcher_seconds'] * 1e6:.1f} µs"
        if row["regex_seconds"] is None:
            regex_text, ratio = (
                f"did not finish in {REGEX_GIVE_UP:.0f} s",
                f"> {REGEX_GIVE_UP / row['matcher_seconds']:,.0f}x",
            )
        else:
            regex_text = f"{row['regex_seconds'] * 1e6:,.1f} µs"
            ratio = f"{row['regex_seconds'] / row['matcher_seconds']:,.1f}x"
        lines.append(f"| {row['case']} | {regex_text} | {matcher_text} | {ratio} |")
    lines += [
        "",
        f"A policy of {policies.GLOBS_MAX_ITEMS:,} globs: parsed in {parsed * 1e3:.0f} ms;"
        f" its first `covers()` (building the prefix index) {first_covers * 1e3:.0f} ms.",
        "",
    ]
    (HERE / "GLOBS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
