"""Sync: set reconciliation, block transfer, shared state."""
