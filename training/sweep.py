"""Ray Tune sweep over a training job: ``python training/sweep.py --config configs/sweep/tiny.yaml``."""

import sys

from recsys.cli.tune import main as tune_main


def main(argv: list[str] | None = None) -> int:
    return tune_main(argv)


if __name__ == "__main__":
    sys.exit(main())
