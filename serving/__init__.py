"""The Ray Serve application: retrieve (query tower + ANN), filter, rank (DLRM on Triton), feedback.

``serving.app`` composes the deployments; ``serving/config.yaml`` is its Ray Serve config and ``recsys serve``
starts it. See the README's "Serving" section.
"""
