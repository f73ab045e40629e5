"""User-facing errors: one line naming the file or key, the problem and the fix."""


class UserError(Exception):
    """An error caused by the user's input. The CLI prints its message on one line, no traceback."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
