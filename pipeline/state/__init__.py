"""Shared state: correlation index, action ledger, baselines, checkpoints, leases."""
