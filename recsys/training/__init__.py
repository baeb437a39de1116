"""Training: batches from dataset shards, the Lightning module, and (next) the Ray Train job."""
