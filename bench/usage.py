"""Command-line parsing shared by `bench` and its training commands."""
from __future__ import annotations

import argparse

from negguide.methods.errors import BenchError


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchError(f"{message} (see `{self.prog} --help`)")
