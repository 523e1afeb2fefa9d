"""digestguard benchmarks: see bench/README.md."""
