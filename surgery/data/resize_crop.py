"""Deterministic resize-and-crop recipes of the spurious-correlation and WILDS datasets,
as transforms with `EvalTransform`'s interface (example -> example with uint8 'image').

    ResizeCrop(resize=(256, 256), crop=224)             # Waterbirds (group_DRO): squash, cut
    ResizeCrop(crop=178, resize=(224, 224), crop_first=True)   # CelebA: cut, squash
    ResizeCrop(resize=224, crop=224, filter='bicubic')  # CLIP: short side, centre

`resize` is (width, height), or an int for the short side (aspect kept, torchvision's
`int(size * long / short)`); `crop` the side of the centre square (torchvision's
CenterCrop offsets, `int(round((h - crop) / 2))`). Pillow filters antialias when
shrinking, like torchvision on PIL images.
"""
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

from surgery.data.transforms import (_encoded_or_image, _open, _pil_of, _replace_image,
                                     center_crop_offsets, resized_size)
from surgery.errors import SurgeryError

_FILTERS = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}


class ResizeCrop:
  def __init__(self, resize: Union[int, Tuple[int, int], None] = None,
               crop: Optional[int] = None, crop_first: bool = False, filter: str = 'bilinear'):
    if filter not in _FILTERS:
      raise SurgeryError(f'filter must be one of {", ".join(_FILTERS)}, got {filter!r}')
    self.resize, self.crop, self.crop_first, self.filter = resize, crop, crop_first, filter

  def _resize(self, image: Image.Image) -> Image.Image:
    if self.resize is None:
      return image
    size = (resized_size(image.size[0], image.size[1], self.resize)
            if isinstance(self.resize, int) else tuple(self.resize))
    return image if image.size == size else image.resize(size, _FILTERS[self.filter])

  def _crop(self, image: Image.Image) -> Image.Image:
    if self.crop is None:
      return image
    width, height = image.size
    if min(width, height) < self.crop:
      raise SurgeryError(f'a {width}x{height} image is smaller than the {self.crop} crop')
    left, top = center_crop_offsets(width, height, self.crop)
    return image.crop((left, top, left + self.crop, top + self.crop))

  def apply(self, image: Image.Image) -> np.ndarray:
    image = image.convert('RGB')
    steps = (self._crop, self._resize) if self.crop_first else (self._resize, self._crop)
    for step in steps:
      image = step(image)
    return np.asarray(image)

  def __call__(self, example: dict, rng=None) -> dict:
    del rng
    encoded, image = _encoded_or_image(example)
    if encoded is not None:
      with _open(encoded) as pil:
        out = self.apply(pil)
    else:
      out = self.apply(_pil_of(image))
    return _replace_image(example, out)

  def __repr__(self) -> str:
    return (f'ResizeCrop(resize={self.resize}, crop={self.crop}, crop_first={self.crop_first}, '
            f'filter={self.filter})')
