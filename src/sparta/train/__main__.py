"""`python -m sparta.train RUN.yaml`: one training run from a YAML file of TrainConfig settings.

The library's own entry point, without the CLI: the experiment runner starts each grid cell this way (a fresh
process per cell, its config in the cell's directory). Bad input is one line on stderr and exit code 2, as with
`sparta train`; `sparta train --config RUN.yaml` is the same run.
"""

from __future__ import annotations

import argparse
import sys

from sparta.console import configure_logging
from sparta.errors import SpartaError
from sparta.train.config import TrainConfig, load_yaml
from sparta.train.distributed import end_launch
from sparta.train.recipes import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparta.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", metavar="RUN.yaml", help="YAML file of TrainConfig settings")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        train(TrainConfig.from_dict(load_yaml(args.config), source=args.config))
        end_launch()
    except SpartaError as err:
        print(f"sparta train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparta train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
