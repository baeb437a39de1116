"""Ray Train job entry points: thin ``main(argv)`` functions over `recsys.training` (and its Tune sweep)."""
