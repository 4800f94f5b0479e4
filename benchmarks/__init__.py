"""Benchmarks of cut-pam on offline data: ``python -m benchmarks --help``."""
