"""Images/s of ImageNet input preprocessing per core: decode + crop to 224, with and without draft.

    python -m experiments.bench.input [--images 100] [--size WxH] [--rounds 5] [--workers K]

Writes its own photo-like JPEGs (multi-scale noise, quality 90: about 110 KB at 500x375,
like ImageNet's photos, whose mean is near 400x350) as an ILSVRC folder tree in a temp
directory, then times in this one process and thread, as images per CPU-second (the
per-core rate, unaffected by other load on the machine), reading each file through
`ImageFolderSource` and
  eval:  decode + Resize(256) + CenterCrop(224)   (`EvalTransform`)
  train: decode + RandomResizedCrop(224) + flip   (`TrainTransform`)
each with JPEG draft decoding on and off; the figure is the median over rounds of
images / second. Sizes default to ImageNet-typical 500x375 and 400x350 and two large
photos (1024x768, 2048x1536), where draft matters. With --workers K it also times a grain
pipeline of K worker processes running the eval and train transforms into batches of 64,
in wall-clock images/s, which other load on the machine does lower. That pipeline is
what `surgery.data.pipeline.batches` builds, spelled out here because `batches` checks
the source's examples for decoded 'image' arrays. The last line is one JSON object.
Target: >= 150 images/s per core for eval at 224.
"""
import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from surgery.data.imagenet import ImageFolderSource
from surgery.data.transforms import EvalTransform, TrainTransform
from surgery.errors import SurgeryError

DEFAULT_SIZES = ('500x375', '400x350', '1024x768', '2048x1536')
UNIQUE_IMAGES = 24  # distinct files per size; the timed passes cycle over them
WNID = 'n01440764'
BATCH = 64


def photo(width: int, height: int, seed: int) -> Image.Image:
  """Photo-like content: noise at every scale from the whole image down to a pixel, with
  slowly falling amplitude, so JPEG sizes and decode times resemble photographs'."""
  rng = np.random.default_rng(seed)
  acc = np.zeros((height, width, 3), np.float32)
  longest = max(width, height)
  for octave in range(1, int(np.ceil(np.log2(longest))) + 1):
    cells = 2 ** octave
    grid = (max(2, round(cells * height / longest)), max(2, round(cells * width / longest)))
    noise = rng.normal(0, 1, grid + (3,)).astype(np.float32)
    up = [np.asarray(Image.fromarray(noise[..., c], 'F').resize((width, height),
                                                                Image.BICUBIC))
          for c in range(3)]
    acc += np.stack(up, -1) * 2.0 ** (-0.1 * octave)
  acc = (acc - acc.mean()) / acc.std()
  return Image.fromarray(np.clip(128 + 55 * acc, 0, 255).astype(np.uint8))


def parse_size(text: str):
  try:
    width, height = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise SurgeryError(f'--size must be WxH (e.g. 500x375), got {text!r}') from None
  if width < 1 or height < 1:
    raise SurgeryError(f'--size must be positive, got {text!r}')
  return width, height


def write_tree(root: str, size, count: int) -> float:
  """`count` JPEGs of `size` under root/train/<wnid>/; returns their mean size in KB."""
  folder = os.path.join(root, 'train', WNID)
  os.makedirs(folder)
  total = 0
  for k in range(count):
    buffer = io.BytesIO()
    photo(size[0], size[1], seed=k).save(buffer, 'JPEG', quality=90)
    with open(os.path.join(folder, f'{WNID}_{k}.JPEG'), 'wb') as f:
      f.write(buffer.getvalue())
    total += len(buffer.getvalue())
  return total / count / 1024


def one_pass(source, transform, n: int, random: bool, round_index: int) -> float:
  """Images per CPU-second of this process for reading and transforming `n` examples
  (cycling over the source): the per-core rate, whatever else runs on the machine."""
  start = time.process_time()
  for i in range(n):
    example = source[i % len(source)]
    if random:
      transform(example, np.random.default_rng((round_index, i)))
    else:
      transform(example)
  return n / (time.process_time() - start)


def single_core_rates(source, n: int, rounds: int) -> dict:
  """{'eval_draft': images/s, ...}: medians over rounds; each round runs every variant
  in turn, so drifting conditions hit all of them alike."""
  variants = {f'{name}_{"draft" if draft else "nodraft"}': (make(draft=draft), random)
              for name, make, random in (('eval', EvalTransform, False),
                                         ('train', TrainTransform, True))
              for draft in (True, False)}
  rates = {key: [] for key in variants}
  for r in range(rounds + 1):  # round 0 warms the page cache and is dropped
    for key, (transform, random) in variants.items():
      rate = one_pass(source, transform, n, random, r)
      if r:
        rates[key].append(rate)
  return {key: round(statistics.median(values), 1) for key, values in rates.items()}


def _image_and_label(example: dict) -> dict:
  return {'image': example['image'], 'label': np.int32(example['label'])}


def pipeline_images_per_second(source, transform, n: int, workers: int) -> float:
  import grain  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():  # as surgery.data.pipeline does for grain 0.2.18
    flags.FLAGS.mark_as_parsed()
  total = n + BATCH * 2 * workers
  dataset = grain.MapDataset.source(source).repeat(-(-total // len(source)))[:total]
  if isinstance(transform, TrainTransform):
    dataset = dataset.random_map(transform, seed=0)
  else:
    dataset = dataset.map(transform)
  dataset = dataset.map(_image_and_label)
  # The read options of `batches` (prefetch=2): grain's default reads 500 elements ahead
  # per worker, which would fill up during start-up and inflate the figure.
  stream = dataset.batch(BATCH).to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)).mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers))
  it = iter(stream)
  try:
    for _ in range(2 * workers):  # start-up: workers import and fill their buffers
      next(it)
    start, seen = time.perf_counter(), 0
    for batch in it:
      seen += len(batch['label'])
      del batch
    return seen / (time.perf_counter() - start)
  finally:
    it.close()


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=100, help='images timed per round')
  parser.add_argument('--size', default=None,
                      help=f'WxH of the test JPEGs (default: each of {", ".join(DEFAULT_SIZES)})')
  parser.add_argument('--rounds', type=int, default=5, help='timed rounds; the median counts')
  parser.add_argument('--workers', type=int, default=0,
                      help='also time a grain pipeline with this many worker processes')
  return parser.parse_args(argv)


def bench_size(size, args):
  with tempfile.TemporaryDirectory(prefix='bench_input_') as root:
    kb = write_tree(root, size, min(args.images, UNIQUE_IMAGES))
    source = ImageFolderSource(root, 'train', cache=False)
    row = {'size': f'{size[0]}x{size[1]}', 'jpeg_kb': round(kb, 1)}
    row.update(single_core_rates(source, args.images, args.rounds))
    if args.workers:
      # About 3 s of work, so the batches buffered during start-up (a few) count little.
      n = max(BATCH * 16, int(row['eval_draft'] * args.workers * 3) // BATCH * BATCH)
      for name, make in (('eval', EvalTransform), ('train', TrainTransform)):
        rate = pipeline_images_per_second(source, make(), n, args.workers)
        row[f'pipeline_{name}_{args.workers}w'] = round(rate, 1)
  return row


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    if args.images < 1 or args.rounds < 1 or args.workers < 0:
      raise SurgeryError('--images and --rounds must be >= 1, --workers >= 0')
    sizes = [parse_size(args.size)] if args.size else [parse_size(s) for s in DEFAULT_SIZES]
    machine = {'arch': platform.machine(), 'nproc': os.cpu_count(), 'cpu': cpu_model(),
               'pillow': Image.__version__, 'loadavg_1min_start': os.getloadavg()[0]}
    print(f"{machine['cpu']}, {machine['arch']}, {machine['nproc']} cores, Pillow "
          f"{machine['pillow']}, load {machine['loadavg_1min_start']:.1f}; images per CPU-second "
          f'(median of {args.rounds} rounds of {args.images}); pipeline: wall-clock images/s')
    columns = ['eval_draft', 'eval_nodraft', 'train_draft', 'train_nodraft']
    if args.workers:
      columns += [f'pipeline_eval_{args.workers}w', f'pipeline_train_{args.workers}w']
    print(f"{'size':>10} {'KB':>6} " + ' '.join(f'{c:>16}' for c in columns))
    rows = []
    for size in sizes:
      row = bench_size(size, args)
      rows.append(row)
      print(f"{row['size']:>10} {row['jpeg_kb']:>6} " +
            ' '.join(f'{row[c]:>16}' for c in columns), flush=True)
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  machine['loadavg_1min_end'] = os.getloadavg()[0]
  print(json.dumps({'machine': machine, 'images': args.images, 'rounds': args.rounds,
                    'workers': args.workers, 'rows': rows}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
