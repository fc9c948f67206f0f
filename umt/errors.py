"""Errors whose message is written for the user (what failed, what to check).

Command lines print them as one line without a traceback (``UMT_TRACEBACK=1`` shows it); a
``ValueError`` (bad config or input) exits 2, a ``UserError`` (the run cannot go on: unreadable
checkpoints, a locked output folder, unreachable storage) exits 1.
"""


class UserError(RuntimeError):
    """The run cannot go on, for a reason the message names."""
