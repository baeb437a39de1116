"""Models built from the feature schema: two-tower retrieval and DLRM ranking (TorchRec embeddings).

Model files hold models only: no I/O, logging or distributed calls. Losses live in the ``*Train``
wrappers, so the bare models are what gets exported and served.
"""
