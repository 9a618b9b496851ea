"""The error types users see: a one-line message naming the problem and the fix."""
from __future__ import annotations

import argparse


class BenchError(Exception):
    """Bad input or a missing resource; the CLI prints it on one line and exits with code 2."""


class MethodError(BenchError):
    """A method failed or returned a bad prediction at a step.

    `frames` holds the traceback lines of the method's own file (its author needs them); they are
    captured as text when the error is raised, so they survive the trip back from a Ray worker.
    """

    def __init__(self, message: str, method_file: str | None = None, frames: str = ""):
        super().__init__(message)
        self.method_file, self.frames = method_file, frames

    def __reduce__(self):
        return (type(self), (str(self), self.method_file, self.frames))


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ' (did you mean X?)' suffix for the closest known name, or ''."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2, like every other bad input (`bench` and the training commands)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchError(f"{message} (see `{self.prog} --help`)")
