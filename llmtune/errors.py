"""The one error type meant for users: the CLI prints its message and exits with code 2, no traceback.

Bugs stay ordinary exceptions, with their tracebacks.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix: a bad recipe, a missing file, a malformed row.

    The message is one paragraph naming the place (file, line, key or row) and what would be valid.
    """
