"""Benchmarks for the SPEC §9 quality bars: `python -m bench` runs them all, each prints ratios."""
