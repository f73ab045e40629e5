"""User-facing errors: one line naming the file or key, the problem and the fix."""

import difflib
from collections.abc import Sequence


class UserError(Exception):
    """An error caused by the user's input. The CLI prints its message without a traceback: one
    line, or a headline and one ``  - item`` line per item when several problems are reported."""

    def __init__(self, message: str, items: Sequence[str] = ()):
        lines = [" ".join(str(message).split())] + [f"  - {' '.join(str(i).split())}" for i in items]
        super().__init__("\n".join(lines))


def closest(word: object, choices: Sequence[str]) -> str | None:
    """The valid name closest to a misspelt ``word`` (difflib's ratio >= 0.6), or None."""
    near = difflib.get_close_matches(str(word), list(choices), n=1)
    return near[0] if near else None


def did_you_mean(word: object, choices: Sequence[str]) -> str:
    """``"did you mean 'x'? "`` for the closest valid name, or ``""``: the hint of an unknown-name error."""
    near = closest(word, choices)
    return f"did you mean {near!r}? " if near else ""
