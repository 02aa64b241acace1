"""The one error type meant for users: the CLI prints its message and exits with code 2, no traceback.

Bugs stay ordinary exceptions, with their tracebacks.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix: a bad recipe, a missing file, a malformed row.

    The message is one paragraph naming the place (file, line, key or row) and what would be valid.
    """


def not_utf8(label: str, data: bytes, fix: str) -> UserError:
    """The UserError for a file that is not UTF-8: the line and column of its first bad byte, and the fix."""
    for line_no, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = line[exc.start]
            return UserError(f"{label}:{line_no}: not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1}); {fix}")
    return UserError(f"{label}: not UTF-8 text; {fix}")
