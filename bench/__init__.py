"""Benchmarks of lmforge against the libraries its users would otherwise reach for.

`python -m bench` (`make bench`) measures matmul ceilings, training steps and generation against
`transformers`, and `lmforge prepare` against the `tokenizers` library alone, then rewrites
BENCHMARKS.md and bench/results.json. Speed is reported as ratios, never asserted.
"""
