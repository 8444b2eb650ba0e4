"""User errors: bad input named in the message, reported by the command line as one line.

The rule the command line applies (`maskrcnn.cli.main`): an exception is the user's, printed as
`error: MESSAGE` with exit status 1 and no traceback, when it is

- a `UserError` (or a subclass): raised by our code about a file, an annotation, an option or a
  setting the user gave, and naming it; or
- an `OSError`: a file that is missing or cannot be read or written, or a download that failed
  (the message names the file or address).

Anything else is a bug and keeps its traceback. `maskrcnn --debug COMMAND ...` shows the traceback
of user errors too.

`UserError` is a `ValueError` and `UserKeyError` also a `KeyError`, so that code catching those
(and tests expecting them) keeps working where a plain `ValueError`/`KeyError` was raised before.
"""

from __future__ import annotations

__all__ = ["UserError", "UserKeyError", "is_user_error", "one_line"]


class UserError(ValueError):
    """Bad input from the user; the message names the file, annotation, option or setting at fault."""


class UserKeyError(UserError, KeyError):
    """An unknown name (config key, preset, state-dict key); printed as its message, not its repr."""

    __str__ = BaseException.__str__  # KeyError's own __str__ would quote the message


def is_user_error(error: BaseException) -> bool:
    """Whether the command line reports `error` as one `error:` line rather than a traceback."""
    return isinstance(error, (UserError, OSError))


def one_line(error: BaseException) -> str:
    """The message of a user error on one line.

    A DataLoader worker's exception is re-raised in the main process as the same type with the
    worker's traceback in its message ("Caught X in DataLoader worker process 0.\\nOriginal
    Traceback ..."): the original message is the traceback's last line, after "X: ".
    """
    text = str(error).strip()
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"  # "[Errno 2] No such file or directory: 'x'"
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        name, sep, message = lines[-1].strip().partition(": ")  # "maskrcnn.errors.UserError: ..."
        return message if sep and name.split(".")[-1] == type(error).__name__ else lines[-1].strip()
    return " ".join(line.strip() for line in lines) or type(error).__name__
