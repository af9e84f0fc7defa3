"""Errors of the data layer that are the user's input, not a bug: main.py prints them as one
`error:` line with exit status 2, before anything is compiled."""


class DataConfigError(ValueError):
  """A data setting (data set, split, batch size against the data) that cannot work; the
  message names the config key, the value and what is allowed."""
