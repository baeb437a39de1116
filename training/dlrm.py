"""Ray Train job for the DLRM ranker: ``python training/dlrm.py --config configs/train/tiny.yaml``."""

import sys

from recsys.cli.train import main_for


def main(argv: list[str] | None = None) -> int:
    return main_for("dlrm", argv)


if __name__ == "__main__":
    sys.exit(main())
