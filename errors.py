"""The one exception type the command-line scripts turn into a one-line message."""
import re

# how torch.utils.data re-raises a worker's exception in the main process: exc_type(this header + traceback)
_WORKER_WRAPPER = re.compile(r"Caught \w+ in [^\n]*\.\nOriginal Traceback \(most recent call last\):\n")


def _original_message(message: str) -> str:
    """The one-line message of a UserError that a DataLoader worker raised, else ``message`` unchanged.

    The re-raised text ends with the worker's ``module.ClassName: message`` line,
    so the message is that last line after the class name.
    """
    if not isinstance(message, str) or not _WORKER_WRAPPER.match(message):
        return message
    last = message.rstrip("\n").rsplit("\n", 1)[-1]
    return last.split(": ", 1)[1] if ": " in last else message


class UserError(Exception):
    """A problem the user can fix: bad data, a bad file or a bad flag. The message says how.

    Raised in a DataLoader worker, it reaches the main process with the same
    one-line message as without workers, not with the worker's traceback.
    """

    def __init__(self, message: str = ""):
        super().__init__(_original_message(message))
