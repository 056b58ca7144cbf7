"""Benchmarks of ntkfuse against peer implementations (`python benchmarks/bench_<name>.py`,
`--small` for a CPU). Timing, rates, device records and JSON output live in `harness`."""
