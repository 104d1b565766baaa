"""The package version (one place; :mod:`sbn_bench` re-exports it)."""

__version__ = "0.1.0"
