"""Alias of :mod:`msgcluster.runtime._consume` until ``_client`` imports it from there."""

from .runtime._consume import is_complete_batch, mark_complete_batch, mark_failed

__all__ = ["is_complete_batch", "mark_complete_batch", "mark_failed"]
