"""Ray Train job entry points: thin ``main(argv)`` functions over `recsys.training` (HPO sweep: to come)."""
