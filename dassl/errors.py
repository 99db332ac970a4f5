"""RunError: a run cannot go on because of what it was given (its folder, its files, its images).

train.py prints it as one line (`train.py: error: ...`) and exits non-zero, without a traceback; the message
names the file, folder or config key at fault and what to do about it.
"""


class RunError(Exception):
    """A user-facing failure of one run, printed as one line by train.py."""
