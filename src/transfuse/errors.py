"""User-facing errors: one line naming the file or key, the problem and the fix."""

from collections.abc import Sequence


class UserError(Exception):
    """An error caused by the user's input. The CLI prints its message without a traceback: one
    line, or a headline and one ``  - item`` line per item when several problems are reported."""

    def __init__(self, message: str, items: Sequence[str] = ()):
        lines = [" ".join(str(message).split())] + [f"  - {' '.join(str(i).split())}" for i in items]
        super().__init__("\n".join(lines))
