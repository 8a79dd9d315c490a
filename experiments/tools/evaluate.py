"""Accuracy of a source checkpoint on a dataset's target set (clean or shifted).

    python -m experiments.tools.evaluate --checkpoint=../shared/weights/memo_resnet26_gn_cifar10.pth
    python -m experiments.tools.evaluate --checkpoint=... --corruption=gaussian_noise --severity=5

The model comes from `surgery.models.create(--model, depth=..., ...)` and reads the
checkpoint with `spec.load`; the images from the dataset contract's target pool of the
shift (`--corruption`: clean, a CIFAR-10-C corruption, label_flip). Prints one line per
evaluated set and, last, a JSON object.
"""
import argparse
import json
import sys
import time

import ml_collections

import surgery
from surgery import datasets, models
from surgery.data.sources import to_arrays
from surgery.errors import SurgeryError


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--checkpoint', required=True, help="a file or directory the model's "
                  'spec.load reads (MEMO/TTT .pth or our orbax directory for ResNet-26)')
  ap.add_argument('--model', default='resnet26', help=f'one of: {", ".join(models.names())}')
  ap.add_argument('--model_overrides', default='', help="the model's options, e.g. "
                  "'depth=26,norm=group' (integers are parsed as such)")
  ap.add_argument('--dataset', default='cifar10', help=f'one of: {", ".join(datasets.names())}')
  ap.add_argument('--corruption', default='clean', help="the target shift: 'clean' or one "
                  "the dataset names (e.g. a CIFAR-10-C corruption)")
  ap.add_argument('--severity', type=int, default=5)
  ap.add_argument('--data_dir', default=None)
  ap.add_argument('--batch_size', type=int, default=500)
  args = ap.parse_args(argv)
  try:
    spec = models.create(args.model, **_overrides(args.model_overrides))
    config = ml_collections.ConfigDict(dict(
        data_dir=args.data_dir or '', corruptions=(args.corruption,), severity=args.severity,
        corruption_seed=0))
    dataset = datasets.create(args.dataset, config)
    shift = dataset.shift_names()[0]
    variables = spec.load(args.checkpoint)
    params = variables['params']
    model_state = {k: v for k, v in variables.items() if k != 'params'}
    target = to_arrays(dataset.target(shift))
    images, labels = target['image'], target['label']
    start = time.time()
    acc = surgery.evaluate(surgery.make_predict(spec.module), params, model_state, images,
                           labels, args.batch_size)
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  name = shift if shift == 'clean' else f'{shift}-{args.severity}'
  print(f'{name}: accuracy {acc:.4f} on {len(labels)} images ({time.time() - start:.1f}s)')
  print(json.dumps({'checkpoint': args.checkpoint, 'model': spec.name, 'set': name,
                    'n': len(labels), 'accuracy': acc}))


def _overrides(text: str) -> dict:
  """'depth=26,norm=group' -> {'depth': 26, 'norm': 'group'}."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    key, sep, value = item.partition('=')
    if not sep or not key.strip():
      raise SurgeryError(f'--model_overrides: {item!r} is not name=value')
    value = value.strip()
    out[key.strip()] = int(value) if value.lstrip('-').isdigit() else value
  return out


if __name__ == '__main__':
  main()
