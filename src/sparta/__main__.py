"""`python -m sparta ...`: the `sparta` command line, for environments without the console script on PATH."""

import sys

from sparta.cli import main

sys.exit(main())
