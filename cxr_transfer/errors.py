"""The one base class for input problems the user can fix; stages print these in one line."""


class CxrError(ValueError):
    """Bad input or configuration; the message names the file, key or value and the fix."""
