"""User-facing errors.

Every mistake a user can make (a bad config value, missing data, a bad checkpoint)
raises a subclass of `SurgeryError`; command-line entry points print its message as
one line and exit non-zero instead of showing a traceback.
"""


class SurgeryError(ValueError):
  """A problem with user input, as opposed to a bug in this library."""


class GroupSpecError(SurgeryError):
  """A parameter-group spec names an unknown or empty group, or groups are incomplete."""


class CheckpointError(SurgeryError):
  """A checkpoint is unreadable, unsafe, or does not fit the model."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C, with what the entry point should tell the user about where work stands."""
