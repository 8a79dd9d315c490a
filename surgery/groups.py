"""Named parameter groups over Flax parameter pytrees.

A model ships an ordered list of `(group_name, regex)` pairs. A parameter belongs to
the first group whose regex matches its path (keys joined by '/', e.g.
`stage1/block0/conv1/kernel`) with `re.search`. Every parameter must fall in a
group, so a model change can never silently leave a tensor untuned or unfrozen.

Specs name the groups to tune (with groups stem, layer1, ..., layer4, head):
  'layer2'              one group
  'layer1-3'            a range in network order (also 'stem-layer1')
  'stem,layer1'         a union ('+' works too)
  'all'                 every group
"""
import re
from typing import Any, Sequence

import jax

from surgery.errors import GroupSpecError

GroupPatterns = Sequence[tuple[str, str]]


def path_str(path) -> str:
  """'a/b/c' for a jax key path; the name the group regexes match against."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def group_names(patterns: GroupPatterns) -> list[str]:
  """Group names in network order, without duplicates."""
  return list(dict.fromkeys(name for name, _ in patterns))


def assign_groups(params: Any, patterns: GroupPatterns) -> Any:
  """A pytree like `params` whose leaves are group names.

  Raises GroupSpecError naming every parameter that no pattern covers.
  """
  compiled = [(name, re.compile(rx)) for name, rx in patterns]
  uncovered = []

  def assign(path, _):
    name = path_str(path)
    for group, rx in compiled:
      if rx.search(name):
        return group
    uncovered.append(name)
    return None

  labels = jax.tree_util.tree_map_with_path(assign, params)
  if uncovered:
    raise GroupSpecError(
        f'{len(uncovered)} parameter(s) fall in no group: {", ".join(uncovered[:8])}'
        f'{" ..." if len(uncovered) > 8 else ""}; groups are {group_names(patterns)}')
  return labels


def parse_spec(spec: str, names: Sequence[str]) -> tuple[str, ...]:
  """The group names a spec selects, in network order."""
  names = list(names)
  if not isinstance(spec, str) or not spec.strip():
    raise GroupSpecError(f'empty group spec; valid groups: {names} or "all"')
  chosen = set()
  for term in re.split(r'[,+]', spec):
    term = term.strip()
    if term == 'all':
      chosen.update(names)
    elif term in names:
      chosen.add(term)
    elif '-' in term:
      chosen.update(_parse_range(term, names))
    else:
      raise GroupSpecError(f'unknown group {term!r} in spec {spec!r}; valid groups: {names} or "all"')
  return tuple(n for n in names if n in chosen)


def _parse_range(term: str, names: list[str]) -> list[str]:
  lo, hi = (s.strip() for s in term.split('-', 1))
  if hi.isdigit():  # 'layer1-3' is short for 'layer1-layer3'
    hi = re.sub(r'\d+$', '', lo) + hi
  if lo not in names or hi not in names:
    raise GroupSpecError(f'bad range {term!r}: both ends must be groups from {names}')
  i, j = names.index(lo), names.index(hi)
  if i > j:
    raise GroupSpecError(f'bad range {term!r}: {lo} comes after {hi} in network order {names}')
  return names[i:j + 1]


def trainable_mask(params: Any, patterns: GroupPatterns, spec: str) -> Any:
  """A pytree of bools: True where the parameter is tuned under `spec`.

  A spec that selects a group holding no parameter of `params` is an error, so a
  typo in a model's patterns cannot turn into a silently frozen network.
  """
  labels = assign_groups(params, patterns)
  chosen = parse_spec(spec, group_names(patterns))
  present = set(jax.tree_util.tree_leaves(labels))
  empty = [g for g in chosen if g not in present]
  if empty:
    raise GroupSpecError(
        f'group(s) {empty} selected by {spec!r} hold no parameters; '
        f'non-empty groups: {[g for g in group_names(patterns) if g in present]}')
  return jax.tree_util.tree_map(lambda g: g in chosen, labels)


def group_sizes(params: Any, patterns: GroupPatterns) -> dict[str, int]:
  """Number of scalars per group, in network order."""
  labels = assign_groups(params, patterns)
  sizes = {g: 0 for g in group_names(patterns)}
  for g, p in zip(jax.tree_util.tree_leaves(labels), jax.tree_util.tree_leaves(params)):
    sizes[g] += int(p.size)
  return sizes
