"""The one exception type the command-line scripts turn into a one-line message."""


class UserError(Exception):
    """A problem the user can fix: bad data, a bad file or a bad flag. The message says how."""
