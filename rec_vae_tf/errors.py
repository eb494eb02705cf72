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


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint; rerunning resumes.

  Not a UserError: nothing was wrong. Launchers print the message and exit with
  status 143 (128 + SIGTERM), so a scheduler sees an unfinished job.
  """

  def __init__(self, step: int, checkpoint: str):
    super().__init__(f'preempted at step {step}; checkpoint {checkpoint}; '
                     'rerun the same command to resume')
    self.step = step
    self.checkpoint = checkpoint
