class RaycvError(Exception):
    """A problem with the user's input (a path, a name, a value). The CLI prints it as one line and
    exits non-zero, without a traceback; anything else is a bug and keeps its traceback."""
