"""The one error type users see: a one-line message naming the problem and the fix."""


class BenchError(Exception):
    """Bad input or a missing resource; the CLI prints it on one line and exits with code 2."""


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ' (did you mean X?)' suffix for the closest known name, or ''."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
