"""User-facing errors: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations


class SpartaError(Exception):
    """A problem with the user's input (arguments, files, models, data), with a message saying what to do."""
