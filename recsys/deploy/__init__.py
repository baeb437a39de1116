"""Deployment: the Triton model repository built from exported models, and the ``tritonserver`` that serves it."""
