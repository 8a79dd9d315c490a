"""One rule for finding models, datasets and methods: by listing their package.

A module of `surgery.models` or `surgery.datasets` that defines `create` serves the names
in its `NAMES` (default: the module's own name); a module of `surgery.methods` that
defines `METHOD`/`METHODS` declares those methods. Adding a file is therefore all an
extension needs; `register` in each package adds one defined elsewhere (a user's own).
Modules whose name starts with '_' are private helpers and are not listed.
"""
import functools
import importlib
import pkgutil

from surgery.errors import SurgeryError


def modules(package: str) -> list:
  """The public modules of `package`, imported, in name order."""
  pkg = importlib.import_module(package)
  return [importlib.import_module(f'{package}.{info.name}')
          for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name)
          if not info.name.startswith('_')]


@functools.lru_cache(maxsize=None)
def creators(package: str) -> dict:
  """{name: module path} of the modules of `package` that define `create`."""
  found = {}
  for module in modules(package):
    if not callable(getattr(module, 'create', None)):
      continue
    for name in getattr(module, 'NAMES', (module.__name__.rsplit('.', 1)[1],)):
      if name in found:
        raise SurgeryError(f'{name!r} is declared by both {found[name]} and {module.__name__}')
      found[name] = module.__name__
  return found


_REGISTERED: dict = {}  # package -> {name: module path}, added with `register`


def register(package: str, name: str, module_path: str) -> None:
  """Serves `name` in `package` from a module outside it (a user's own)."""
  _REGISTERED.setdefault(package, {})[name] = module_path


def find(package: str) -> dict:
  """{name: module path}: the package's own modules, then those registered to it."""
  return {**creators(package), **_REGISTERED.get(package, {})}
