"""How sparta's log records reach a terminal: the `sparta` logger's INFO records as plain lines on standard
output (what the CLI and `python -m sparta.train` print while they work), warnings and errors too.

The handler looks up `sys.stdout` when it writes rather than when it is created, so output redirected later (a
test's capture, a cell's log file) still receives the lines.
"""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "sparta-console"


class _CurrentStdout(logging.StreamHandler):
    @property
    def stream(self):  # noqa: ANN201 - the stream of the moment
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - StreamHandler.__init__ assigns it
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Send the `sparta` logger's records at `level` and above to standard output, once per process."""
    root = logging.getLogger("sparta")
    root.setLevel(level)
    if not any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        handler = _CurrentStdout()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.propagate = False
