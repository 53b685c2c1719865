"""One exception type for every user-facing problem.

The CLI prints ``bertforge: error: <message>`` for these (one line, no traceback); anything else is a bug
and keeps its traceback. Messages name the file, line, key or value and say what was expected.
"""


class BertforgeError(Exception):
    """Bad input from the user: a file, a key, a value. The message alone must say what to fix."""
