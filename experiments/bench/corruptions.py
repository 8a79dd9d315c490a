"""Time each CIFAR-10-C corruption on the CIFAR-10 test images.

    python -m experiments.bench.corruptions [--n 10000] [--severity 3] [--repeats 3]

Prints a table of median seconds per corruption and their total; the last line is a
JSON object with the same numbers. The budget this tracks: all 19 corruptions at
one severity for the 10k test images in under 2 minutes on 2 cores.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from surgery.corruptions import CORRUPTIONS, corrupt
from surgery.data.cifar10 import load_cifar10
from surgery.errors import SurgeryError


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--n', type=int, default=10_000, help='number of test images')
  parser.add_argument('--severity', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3, help='timed runs per corruption')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--corruptions', default=','.join(CORRUPTIONS),
                      help='comma-separated subset')
  parser.add_argument('--data-dir', default=None, help='default: $SURGERY_DATA_DIR')
  parser.add_argument('--synthetic', action='store_true',
                      help='random images instead of CIFAR-10 (no data needed)')
  return parser.parse_args(argv)


def images_for(args):
  if args.synthetic:
    return np.random.default_rng(0).integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
  images, _ = load_cifar10('test', args.data_dir)
  if args.n > len(images):
    raise SurgeryError(f'--n {args.n} exceeds the {len(images)} test images')
  return images[:args.n]


def time_corruption(images, name, severity, seed, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    corrupt(images, name, severity, seed)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    names = [n.strip() for n in args.corruptions.split(',') if n.strip()]
    images = images_for(args)
    medians = {name: time_corruption(images, name, args.severity, args.seed, args.repeats)
               for name in names}
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  total = sum(medians.values())
  print(f'{len(images)} images, severity {args.severity}, median of {args.repeats} runs, '
        f'{os.cpu_count()} CPUs')
  print(f'{"corruption":<20}{"seconds":>9}{"ms/1k img":>11}')
  for name, seconds in medians.items():
    print(f'{name:<20}{seconds:>9.2f}{1000 * seconds / len(images) * 1000:>11.1f}')
  print(f'{"total":<20}{total:>9.2f}')
  print(json.dumps({'n': len(images), 'severity': args.severity, 'repeats': args.repeats,
                    'seconds': {k: round(v, 3) for k, v in medians.items()},
                    'total_seconds': round(total, 3)}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
