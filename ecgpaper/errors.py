"""One exception type for problems the user can fix: the command line prints
its message (which says what to do) without a traceback and exits with 2."""


class UserError(Exception):
    """Bad input or missing prerequisite, with a message that says what to do."""
