"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""


class UserError(Exception):
    """A problem with the user's input: names the field and, where possible, the fix."""

    def __init__(self, message: str, field: str | None = None, fix: str | None = None):
        self.message = message
        self.field = field
        self.fix = fix
        parts = [f"{field}: {message}" if field else message]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__("; ".join(parts))


def unknown_field_fix(name: str, known, prefix: str = "") -> str:
    """The fix for an unknown field `name`: "did you mean PREFIX.X?" for the closest known
    field (difflib.get_close_matches, ratio >= 0.6), else the known fields listed."""
    import difflib

    known = sorted(map(str, known))
    near = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    if near:
        return f"did you mean {prefix + '.' if prefix else ''}{near[0]}?"
    return "remove it; known fields here: " + ", ".join(known)
