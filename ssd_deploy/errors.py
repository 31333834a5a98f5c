"""The one exception type for mistakes a user can make (bad paths, configs, tensors, options).

The CLI turns it into a single message and exit status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message alone must say what is wrong and where."""
