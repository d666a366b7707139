"""`python -m sparta.cli`: the `sparta` command, for environments without its console script."""

import sys

from sparta.cli import main

sys.exit(main())
