"""The one exception type for mistakes a user made (bad recipe, missing file, unreachable hub).

The CLI turns a `PeftxError` into one line on stderr and exit code 2; every other exception is a bug
and keeps its traceback.
"""


class PeftxError(Exception):
    """A user-caused error whose message is complete on one line."""
