"""The one exception type for mistakes a user made (bad recipe, missing file, unreachable hub).

The CLI turns a `PeftxError` into one line on stderr and exit code 2; every other exception is a bug
and keeps its traceback.
"""


class PeftxError(Exception):
    """A user-caused error whose message is complete on one line."""


class Diverged(PeftxError):
    """Training stopped being a number (a non-finite loss or gradient norm): the run has no result.
    The CLI exits with `EXIT_DIVERGED`, apart from crashes (1) and user mistakes (2)."""


class Interrupted(Exception):
    """A run stopped on request (SIGINT, SIGTERM) after writing a checkpoint it can resume from.

    Attributes:
        signal_name: 'SIGINT' or 'SIGTERM'; the CLI exits with 128 + the signal's number, as a shell would.
    """

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name


class Pruned(Exception):
    """A sweep's pruner stopped a run at an evaluation: its trial looks worse than its group's at the
    same step. Final, like a completed run, but with no result to rank (status 'pruned').

    Attributes:
        step: the evaluation's step.
        reason: one line saying why (the pruner, the metric and its value).
    """

    def __init__(self, step: int, reason: str):
        super().__init__(reason)
        self.step = step
        self.reason = reason


EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
