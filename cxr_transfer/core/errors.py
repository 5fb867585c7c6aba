"""The one base class for input problems the user can fix; stages print these in one line."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (a library's error for a one-line report)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


class CxrError(ValueError):
    """Bad input or configuration; the message names the file, key or value and the fix."""
