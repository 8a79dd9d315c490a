"""Helpers every dataset of the runner shares."""


def split_names(value) -> list:
  """Names from a tuple or a comma string; tuple items may hold commas too (the
  command line's `--config.corruptions=snow,fog` arrives as ('snow,fog',))."""
  items = value if isinstance(value, (list, tuple)) else [value or '']
  return [t.strip() for item in items for t in str(item).split(',') if t.strip()]
