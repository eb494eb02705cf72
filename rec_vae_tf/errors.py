"""Errors that mean "the user asked for something we cannot do".

Launchers catch `UserError` and print its message on one line with a non-zero
exit status instead of a traceback. Library code raises it for bad input
(invalid config values, missing or malformed data files, unusable workdirs);
programming errors stay ordinary exceptions so they keep their tracebacks.
"""


class UserError(Exception):
  """A problem with the user's input, reported as one line without a traceback."""


class ConfigError(UserError, ValueError):
  """An invalid configuration field."""


class DataError(UserError):
  """A missing or malformed data file."""


class TrainingDiverged(UserError, FloatingPointError):
  """A non-finite loss; the last good checkpoint is kept."""
