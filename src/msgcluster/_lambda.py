"""Alias of :mod:`msgcluster.runtime._safe_batch` until ``_client`` imports it from there."""

from .runtime._safe_batch import ProcessRecord, safe_process_batch

__all__ = ["ProcessRecord", "safe_process_batch"]
