"""MEMO throughput: adapted test images per second for each freezing option.

    python -m experiments.bench.memo [--model resnet26] [--images 30] [--rounds 3] [--copies 32]
        [--flax_group_norm]

One compiled adapt-then-predict call per image (32 augmented copies, one step), on
random uint8 images, with the model at its default (pre-trained) size and each of the
MEMO options it declares (`extra_group_maps['memo']`), streamed by the runner's own
`surgery.memo.adapt.run_stream`. Per option and mode it reports the median over rounds
of the per-image time (the stream's first image untimed); options are
measured in alternating rounds in this one process so machine noise hits them alike.
The last line printed is one JSON object with every figure. `--flax_group_norm` also
measures every setting with flax.linen.GroupNorm in place of the model's own
(`surgery/models/group_norm.py`), in the same alternating rounds: the before/after of
that change.
"""
import argparse
import json
import platform
import statistics

import jax
import numpy as np

from surgery import models
from surgery.errors import SurgeryError
from surgery.memo import adapt


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet26', help=f'one of: {", ".join(models.names())}')
  parser.add_argument('--images', type=int, default=30, help='images per round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--copies', type=int, default=adapt.NUM_COPIES)
  parser.add_argument('--flax_group_norm', action='store_true',
                      help='also time each setting with flax.linen.GroupNorm')
  args = parser.parse_args(argv)
  if args.images < 2 or args.rounds < 1 or args.copies < 1:
    parser.error('--images must be at least 2 (the first is not timed); --rounds and '
                 '--copies must be positive')

  try:
    spec = models.create(args.model)
    group_map = adapt.memo_group_map(spec)
  except SurgeryError as e:
    parser.error(str(e))
  variables = spec.init()
  params = variables['params']
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  size = spec.image_size
  images = np.random.RandomState(0).randint(0, 256, (args.images, size, size, 3)).astype(np.uint8)
  first_key = adapt.image_keys(0, 1)[0]
  modules = {'': spec.module}
  if args.flax_group_norm:
    if not hasattr(spec.module, 'group_norm'):
      parser.error(f'{spec.name} has no GroupNorm to swap')
    import flax.linen as nn
    modules['flax_gn '] = spec.module.clone(group_norm=nn.GroupNorm)
  runners = {}
  for mode in adapt.MODES:
    for option in group_map[1]:
      for label, module in modules.items():
        mask = adapt.memo_mask(params, option, group_map)
        tx = adapt.memo_optimizer(mode, mask)
        fn = adapt.make_adapt_predict(module, tx, num_copies=args.copies,
                                      model_state=model_state)
        state = tx.init(params)
        jax.block_until_ready(fn(params, state, images[0], first_key))  # compile
        runners[f'{label}{mode}/{option}'] = (fn, state, mode)

  labels = np.zeros(args.images, np.int64)  # accuracy is not the point here
  times = {name: [] for name in runners}
  for _ in range(args.rounds):
    for name, (fn, state, mode) in runners.items():
      out = adapt.run_stream(fn, params, state, images, labels, mode, progress=False)
      times[name].append(1 / out['images_per_second'])

  out = {'benchmark': 'memo_adapt_predict', 'model': spec.name, 'copies': args.copies, 'steps': 1,
         'images_per_round': args.images, 'rounds': args.rounds,
         'device': jax.devices()[0].platform, 'machine': platform.machine(),
         'jax': jax.__version__, 'settings': {}}
  for name, ts in times.items():
    med = statistics.median(ts)
    out['settings'][name] = {'ms_per_image': 1e3 * med, 'images_per_second': 1 / med}
    print(f'{name:26s} {1e3 * med:8.1f} ms/image  {1 / med:6.2f} images/s', flush=True)
  print(json.dumps(out))


if __name__ == '__main__':
  main()
