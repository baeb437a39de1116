"""Monitoring: data drift of live model inputs against the training profile, and alerting on metrics."""
