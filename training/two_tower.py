"""Ray Train job for the two-tower retriever: ``python training/two_tower.py --config configs/train/tiny.yaml``."""

import sys

from recsys.cli.train import main_for


def main(argv: list[str] | None = None) -> int:
    return main_for("two-tower", argv)


if __name__ == "__main__":
    sys.exit(main())
