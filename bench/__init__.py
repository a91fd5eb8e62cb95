"""aml-identity benchmarks: each runs the peers an issue names side by side and writes docs/performance.md."""
