"""ImageNet-style decode + crop to uint8 224x224x3, the standard torchvision recipe.

    train = TrainTransform()                      # RandomResizedCrop(224) + horizontal flip
    evaluate = EvalTransform()                    # Resize(256) + CenterCrop(224)
    train(example, np.random.default_rng(7))      # {'encoded': bytes, ...} -> {'image', ...}
    evaluate(example)

Why this augmentation: the paper (A.4) pre-trains and fine-tunes Living-17 / Entity-30
"following LP-FT (Kumar et al., 2022a)" and says nothing else about augmentation; LP-FT's
configs for both (transfer_learning, configs/adaptation/datasets_{living17,entity30}.yaml,
"taken from the SwAV fine-tuning script") train with torchvision
`RandomResizedCrop(224)` + `RandomHorizontalFlip()` and evaluate with `Resize(256)` +
`CenterCrop(224)`, then normalise. Here images stay uint8 because the models normalise
inside.

Exactness: crop boxes follow torchvision's arithmetic (RandomResizedCrop.get_params with
scale (0.08, 1), ratio (3/4, 4/3), 10 tries then the centre-crop fallback; Resize's
`int(256 * long / short)`; CenterCrop's `int(round((h - 224) / 2))`), drawn from a numpy
Generator instead of torch's RNG. Images are converted to RGB first (ImageNet has
greyscale and CMYK JPEGs, and one PNG named .JPEG; Pillow reads the format from the
bytes), as torchvision's `pil_loader` does. The crop is resized with Pillow's bilinear
filter, which antialiases when shrinking (its support widens with the scale factor), i.e.
torchvision's `antialias=True` on PIL images. Eval resizes the whole image and then cuts
the centre, so it equals Resize + CenterCrop to the bit; train cuts and resizes its crop
in one `Image.resize(..., box=...)`, as `resized_crop` does, skipping the pixels that the
crop throws away.

Speed: with `draft=True` a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (a DCT-
domain downscale, nearly free) when the region still has at least the output's pixels at
that scale, so decoding never goes below what the final resize needs (eval: the short
side stays >= 256; train: the chosen crop stays >= 224 on both sides). Boxes are chosen
on the full-size image and then scaled by the draft factor, so the random draws and the
part of the picture are the same with and without draft; only the resampling differs
slightly. Typical ImageNet photos (about 500x375) are too small for a draft at eval
(375 / 2 < 256); large photos gain a lot.
"""
import io
import math
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

from surgery.errors import SurgeryError

IMAGE_SIZE = 224
RESIZE_SIZE = 256
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
ENCODED_KEY = 'encoded'
_DRAFT_FACTORS = (8, 4, 2, 1)

Box = Tuple[float, float, float, float]  # left, top, right, bottom, in pixels
RngLike = Union[np.random.Generator, int]


# --------------------------------------------------------------------------- boxes

def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=SCALE, ratio=RATIO) -> Tuple[int, int, int, int]:
  """(left, top, crop_width, crop_height): torchvision's RandomResizedCrop.get_params.

  Area a uniform fraction in `scale` of the image, log aspect ratio uniform in
  log(`ratio`); 10 tries to fit the image, else the largest centred crop whose aspect
  ratio is clamped into `ratio`.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def resized_size(width: int, height: int, short_side: int = RESIZE_SIZE) -> Tuple[int, int]:
  """(width, height) after torchvision's Resize(short_side): the long side truncated."""
  if width <= height:
    return short_side, int(short_side * height / width)
  return int(short_side * width / height), short_side


def center_crop_offsets(width: int, height: int, crop: int = IMAGE_SIZE) -> Tuple[int, int]:
  """(left, top) of torchvision's CenterCrop(crop) of a width x height image."""
  if width < crop or height < crop:  # torchvision would pad; resize >= crop rules it out
    raise SurgeryError(f'cannot centre-crop {crop} from {width}x{height}')
  return int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))


# ------------------------------------------------------------------------- decoding

def draft_factor(box: Box, out_size: Tuple[int, int]) -> int:
  """The largest JPEG reduction (8, 4, 2 or 1) that leaves `box` >= `out_size` pixels."""
  box_w, box_h = box[2] - box[0], box[3] - box[1]
  for factor in _DRAFT_FACTORS:
    if box_w / factor >= out_size[0] and box_h / factor >= out_size[1]:
      return factor
  return 1


def _draft(image: Image.Image, box: Box, out_size: Tuple[int, int]) -> Box:
  """Ask libjpeg for the smallest decode that keeps `box` >= `out_size`; `box` in it.

  Must come before the pixels are loaded. Pillow ignores the request for formats other
  than JPEG, and the box stays as it is.
  """
  factor = draft_factor(box, out_size)
  if factor == 1:
    return box
  width, height = image.size
  granted = image.draft('RGB', (width // factor, height // factor))
  if granted is None:
    return box
  reduced = width / granted[1][2]  # draft's box is (0, 0, width / scale, height / scale)
  return tuple(v / reduced for v in box)


def _open(encoded) -> Image.Image:
  if isinstance(encoded, np.ndarray):
    encoded = encoded.tobytes()
  return Image.open(io.BytesIO(encoded))


def _eval_pil(image: Image.Image, size: int, resize: int, draft: bool) -> np.ndarray:
  """Resize(resize) + CenterCrop(size) as torchvision does it: the whole picture is
  resized, then cut, so that the result equals the reference to the bit (a resize over
  just the crop box computes the same filter positions with different float rounding and
  is off by one in about 0.1% of values)."""
  width, height = image.size
  new_size = resized_size(width, height, resize)
  box = (0, 0, width, height)
  if draft:
    box = _draft(image, box, new_size)
  resized = image.convert('RGB').resize(new_size, Image.BILINEAR, box=box)
  left, top = center_crop_offsets(new_size[0], new_size[1], size)
  return np.asarray(resized.crop((left, top, left + size, top + size)))


def _train_pil(image: Image.Image, rng: np.random.Generator, size: int, scale, ratio,
               flip: bool, draft: bool) -> np.ndarray:
  """RandomResizedCrop(size) + RandomHorizontalFlip: the crop box is drawn on the full
  image, then cut and resized in one `resize(box=...)`."""
  left, top, w, h = random_resized_crop_box(image.size[0], image.size[1], rng, scale, ratio)
  box = (left, top, left + w, top + h)
  if draft:
    box = _draft(image, box, (size, size))
  out = image.convert('RGB').resize((size, size), Image.BILINEAR, box=box)
  if flip and rng.random() < 0.5:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(out)


def eval_crop(encoded, *, size: int = IMAGE_SIZE, resize: int = RESIZE_SIZE,
              draft: bool = True) -> np.ndarray:
  """Encoded image -> uint8 [size, size, 3]: Resize(resize) then CenterCrop(size)."""
  with _open(encoded) as image:
    return _eval_pil(image, size, resize, draft)


def train_crop(encoded, rng: RngLike, *, size: int = IMAGE_SIZE, scale=SCALE, ratio=RATIO,
               flip: bool = True, draft: bool = True) -> np.ndarray:
  """Encoded image -> uint8 [size, size, 3]: RandomResizedCrop(size) + horizontal flip.

  Draws the crop, then (with `flip`) one uniform for the coin, from `rng`.
  """
  with _open(encoded) as image:
    return _train_pil(image, np.random.default_rng(rng), size, scale, ratio, flip, draft)


def _pil_of(image: np.ndarray) -> Image.Image:
  image = np.asarray(image, np.uint8)
  return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)


# ------------------------------------------------------------------------ transforms

def _replace_image(example: dict, image: np.ndarray) -> dict:
  out = {key: value for key, value in example.items() if key != ENCODED_KEY}
  out['image'] = image
  return out


def _encoded_or_image(example: dict):
  if ENCODED_KEY in example:
    return example[ENCODED_KEY], None
  if 'image' in example:
    return None, example['image']
  raise SurgeryError(f"an example needs '{ENCODED_KEY}' (image file bytes) or 'image' "
                     f'(uint8 [H, W, C]), got keys {sorted(example)}')


class EvalTransform:
  """Example -> example with 'image' uint8 [224, 224, 3] from Resize(256) + CenterCrop(224).

  Reads 'encoded' (image file bytes, dropped from the output) or, failing that, 'image'
  (a decoded uint8 array); other keys pass through. `rng` is accepted and ignored, so
  evaluation can share the training call signature.
  """

  def __init__(self, size: int = IMAGE_SIZE, resize: int = RESIZE_SIZE, draft: bool = True):
    self.size, self.resize, self.draft = size, resize, draft

  def __call__(self, example: dict, rng: Optional[RngLike] = None) -> dict:
    del rng
    encoded, image = _encoded_or_image(example)
    if encoded is not None:
      out = eval_crop(encoded, size=self.size, resize=self.resize, draft=self.draft)
    else:
      out = _eval_pil(_pil_of(image), self.size, self.resize, draft=False)
    return _replace_image(example, out)

  def __repr__(self) -> str:
    return f'EvalTransform(size={self.size}, resize={self.resize}, draft={self.draft})'


class TrainTransform:
  """(example, rng) -> example with 'image' from RandomResizedCrop(224) + horizontal flip.

  Deterministic given `rng` (a numpy Generator or an int seed). Same signature as grain's
  `MapDataset.random_map` expects, which hands each element its own Generator seeded
  from (pipeline seed, element index).
  """

  def __init__(self, size: int = IMAGE_SIZE, scale=SCALE, ratio=RATIO, flip: bool = True,
               draft: bool = True):
    if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]:
      raise SurgeryError(f'scale and ratio must be increasing positive pairs, got {scale} '
                         f'and {ratio}')
    self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
    self.flip, self.draft = flip, draft

  def __call__(self, example: dict, rng: RngLike) -> dict:
    if rng is None:
      raise SurgeryError('TrainTransform needs an rng (numpy Generator or int seed)')
    rng = np.random.default_rng(rng)
    encoded, image = _encoded_or_image(example)
    if encoded is not None:
      out = train_crop(encoded, rng, size=self.size, scale=self.scale, ratio=self.ratio,
                       flip=self.flip, draft=self.draft)
    else:
      out = _train_pil(_pil_of(image), rng, self.size, self.scale, self.ratio, self.flip,
                       draft=False)
    return _replace_image(example, out)

  random_map = __call__  # grain's RandomMapTransform method name

  def __repr__(self) -> str:
    return (f'TrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, '
            f'flip={self.flip}, draft={self.draft})')
