"""The data layer's user-facing error: a problem with the user's files or dataset request.

Every error that the user fixes (a folder layout, a changed source folder, an unknown
dataset or class name, an unreadable image) is a :class:`DataError` whose message names
the file or option and the fix, so command-line tools print it as one ``error:`` line
instead of a traceback. A ``ValueError``, so callers that catch those keep working.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad user data or dataset request; the message names what and the fix."""
