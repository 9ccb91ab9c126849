"""The one exception type for user mistakes (bad files, bad settings).

The CLI turns it into a single line on stderr and a non-zero exit, never a traceback.
"""


class L2GError(Exception):
    """A problem the user can fix; the message names the file or setting and what is wrong."""
