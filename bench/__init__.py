"""Benchmarks of memsched: each module is one bounded command that prints ratios measured in the same run."""
