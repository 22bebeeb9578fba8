"""Errors that the user can fix: wrong or damaged data, a missing file, a setting that does not
fit.  The command lines print their message as one line, without a traceback (stafast.cli.run);
each subclass also derives from the built-in error it refines (ValueError, FileNotFoundError)."""


class UserError(Exception):
    """An error whose message says what is wrong and where (a file, a field, a flag)."""
