"""Surgical fine-tuning of Flax NNX modules with the groups, optimizer and train step
made for Linen.

`nnx_model(module)` splits a module (`nnx.split`) into its graph definition and plain
nested dicts of arrays: the `nnx.Param`s, and the other variables as `model_state`
collections. Group regexes therefore match the same '/'-joined paths (`layers/0/kernel`),
and `trainable_mask`, `surgical` and optax see an ordinary parameter tree. The wrapper
it returns has Linen's `apply(variables, images, train=..., mutable=...)`, so
`make_train_step`, `make_predict` and anything else that applies a Linen module drive
it unchanged; `nnx_update` writes tuned arrays back into the module.

    model, params, model_state = surgery.nnx_model(module)
    tx = surgery.surgical(optax.adam(1e-3), surgery.trainable_mask(params, groups, 'head'))
    step = surgery.make_train_step(model, tx)
    ...
    surgery.nnx_update(module, state.params, state.model_state)

Train mode is `module.train()` (Dropout on, BatchNorm on batch statistics, which then
come back updated in `model_state`), eval mode `module.eval()`; a module whose
`__call__` takes `train` gets it too. Dropout in train mode needs the module to hold an
`nnx.Rngs` stream (e.g. `nnx.Dropout(0.1, rngs=rngs)`); its key and counter travel in
`model_state['rngs']`, so each step draws a fresh mask. Not supported: modules that add
variables while called (`sow`), since a jitted step needs a fixed state structure.
"""
import inspect
from typing import Any, Optional, Sequence, Union

from flax import nnx

# Every variable lands in exactly one collection (`...` takes the rest). Linen's names,
# so code that reads `model_state['batch_stats']` serves both APIs.
COLLECTIONS = (('params', nnx.Param), ('batch_stats', nnx.BatchStat), ('rngs', nnx.RngState),
               ('state', ...))


def _takes_train(module: nnx.Module) -> bool:
  # Only a named parameter counts: containers such as nnx.Sequential take **kwargs and
  # would hand `train` on to layers that reject it.
  try:
    return 'train' in inspect.signature(module.__call__).parameters
  except (AttributeError, TypeError, ValueError):
    return False


def _collections(module: nnx.Module) -> tuple[nnx.GraphDef, dict[str, dict]]:
  graphdef, *states = nnx.split(module, *(f for _, f in COLLECTIONS))
  return graphdef, {name: nnx.to_pure_dict(s) for (name, _), s in zip(COLLECTIONS, states)}


class NNXModel:
  """A stateless view of an NNX module with a Linen-style `apply`.

  Each call rebuilds the module from the arrays it is given (`nnx.merge` places them by
  path, whichever collection they come in), so under `jax.jit` and `jax.grad` the
  parameters are ordinary traced inputs and the wrapped module is never mutated.
  """

  def __init__(self, graphdef: nnx.GraphDef, module_type: type, takes_train: bool):
    self.graphdef = graphdef
    self.module_type = module_type
    self.takes_train = takes_train

  def apply(self, variables: dict[str, Any], images, *, train: bool = False,
            mutable: Union[bool, str, Sequence[str]] = False):
    """Logits, or `(logits, {collection: new value})` for the `mutable` collections.

    Args:
      variables: `{'params': params, **model_state}`, as `nnx_model` returned them.
      images: the module's input.
      train: train mode (`module.train()`) or eval mode (`module.eval()`).
      mutable: as in Linen: False, True (every collection), or collection name(s).
    """
    module = nnx.merge(self.graphdef, *variables.values())
    # The merged module is a fresh object, so switching its mode touches nothing else.
    if train:
      module.train()
    else:
      module.eval()
    out = module(images, train=train) if self.takes_train else module(images)
    if mutable is False:
      return out
    if mutable is True:
      mutable = list(variables)
    elif isinstance(mutable, str):
      mutable = [mutable]
    new = _collections(module)[1]
    return out, {name: new[name] for name in mutable}

  def __repr__(self):
    return f'NNXModel({self.module_type.__name__})'


def nnx_model(module: nnx.Module) -> tuple[NNXModel, dict, dict]:
  """`(model, params, model_state)` for surgical fine-tuning of an NNX module.

  `params` holds the `nnx.Param` arrays as a nested dict (list indices stay ints, so a
  path reads `layers/0/kernel`); `model_state` holds the non-empty other collections
  (`batch_stats`, `rngs`, `state`). Both share arrays with `module` and leave it as is.
  """
  graphdef, collections = _collections(module)
  params = collections.pop('params')
  model_state = {name: tree for name, tree in collections.items() if tree}
  return NNXModel(graphdef, type(module), _takes_train(module)), params, model_state


def nnx_update(module: nnx.Module, params: dict, model_state: Optional[dict] = None) -> None:
  """Writes `params` (and `model_state`) back into `module`, in place."""
  nnx.update(module, params, *(model_state or {}).values())
