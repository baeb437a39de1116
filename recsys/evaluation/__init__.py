"""Offline evaluation: ranking and retrieval metrics, baselines and the oracle."""
