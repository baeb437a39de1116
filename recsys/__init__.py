"""recsys: a recommender-system training and inference stack with the MLOps loop around it."""

__version__ = "0.1.0"
