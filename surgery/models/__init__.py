"""The model contract: `spec = surgery.models.create(name, **overrides)`.

Each model lives in its own module here (`surgery/models/<name>.py`) that defines
`create(**overrides) -> ModelSpec`. A spec carries everything a runner needs to tune
the model surgically without knowing which model it is:

  spec.module        a Flax Linen module; `spec.module.apply(variables, images,
                     train=False)` takes float NHWC images in [0, 1] and returns logits
                     (input normalisation is inside the model)
  spec.groups        ordered (group name, regex) pairs over parameter paths
  spec.methods       paper-facing method name -> group spec (one method may tune
                     several groups, as the authors' code does)
  spec.head_methods  methods swept over the head's learning-rate grid (`last_lrs`)
  spec.image_size, spec.num_classes
  spec.load(path)    the variables dict ({'params': ...} plus 'batch_stats' where the
                     model has them) from any checkpoint the model accepts
  spec.init(seed)    freshly initialised variables
  spec.cuts          True if the module can run part of the network: with attributes
                     `start` and `stop` (group boundaries: boundary k is the input of
                     spec.groups[k], 0 the image, len(groups) the logits),
                     `module.clone(stop=k)` returns boundary k's activations and
                     `module.clone(start=k)` takes them as its input. The fine-tuner
                     then computes a frozen prefix once per target set.

Only a model's own module names its groups.
"""
import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from surgery import discovery
from surgery.errors import CheckpointError, SurgeryError



@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  module: Any
  groups: tuple
  methods: Mapping[str, str]
  image_size: int
  num_classes: int
  load: Callable[[str], dict]
  head_methods: tuple = ()
  cuts: bool = False  # the module takes `start`/`stop` group boundaries (see above)
  # Optional extra group maps for other protocols (e.g. MEMO's finer first block):
  # name -> (groups, {option: group spec}).
  extra_group_maps: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def init(self, seed: int = 0) -> dict:
    """Freshly initialised variables (params, plus batch_stats where the model has them)."""
    dummy = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
    variables = self.module.init(jax.random.PRNGKey(seed), dummy)
    return dict(variables)

  def group_names(self) -> list:
    from surgery.groups import group_names
    return group_names(self.groups)


_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype of a `model.dtype` option ('float32' or 'bfloat16')."""
  if name not in _DTYPES:
    raise SurgeryError(f'model.dtype must be one of {", ".join(_DTYPES)}, got {name!r}')
  return _DTYPES[name]


def _modules() -> dict:
  return discovery.find(__name__)


def names() -> list:
  """Every model name: the modules of this package that define `create` (each serving
  its `NAMES`, default its own name), then those added with `register`."""
  return sorted(_modules())


def register(name: str, module_path: str) -> None:
  """Adds a model module defined outside this package (one defining
  `create(**overrides)`) under `name`."""
  discovery.register(__name__, name, module_path)


def get_module(name: str):
  """The Python module that declares model `name` (for model-specific helpers)."""
  path = _modules().get(name)
  if path is None:
    raise SurgeryError(f'unknown model {name!r}; valid: {", ".join(names())}')
  return importlib.import_module(path)


def create(name: str, **overrides) -> ModelSpec:
  """The spec of model `name`; unknown names and overrides are one-line user errors."""
  module = get_module(name)
  if hasattr(module, 'VARIANTS'):  # one module, several registered names
    overrides = {'variant': name, **overrides}
  try:
    spec = module.create(**overrides)
  except TypeError as e:  # an override the model does not have
    raise SurgeryError(f'model {name}: {e}') from None
  return dataclasses.replace(spec, load=_naming_shape_options(spec))


def _naming_shape_options(spec: ModelSpec):
  """`spec.load`, whose does-not-fit errors also name the config fields that set the
  model's shapes: a checkpoint of another width is most often a forgotten option."""
  load = spec.load
  options = [k for k, v in spec.overrides.items()
             if isinstance(v, (int, tuple, list)) and not isinstance(v, bool)]

  def checked(path):
    try:
      return load(path)
    except CheckpointError as e:
      if 'does not fit' not in str(e) or not options:
        raise
      raise CheckpointError(
          f'{e}; the model\'s shapes are set by '
          + ', '.join(f'model.{spec.name}.{o} ({_text(spec.overrides[o])})' for o in options)
      ) from None

  return checked


def _text(value) -> str:
  return ','.join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)

