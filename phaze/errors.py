"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""


class UserError(Exception):
    """A problem with the user's input: names the field and, where possible, the fix."""

    def __init__(self, message: str, field: str | None = None, fix: str | None = None):
        self.field = field
        self.fix = fix
        parts = [f"{field}: {message}" if field else message]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__("; ".join(parts))
