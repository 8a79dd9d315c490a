"""ImageNet images for the subpopulation datasets (Living-17, Entity-30, ...).

The images come from `surgery.data.imagenet` (an ILSVRC-2012 image-folder tree or TFDS
`imagenet2012` as array_record, in `config.data_dir` or `$SURGERY_DATA_DIR/imagenet`),
class indices from the BREEDS hierarchy's `dataset_class_info.json`. Pools hold encoded
JPEGs; `decoded` gives the evaluation crop (resize 256, centre crop 224), and
`train_transform` the random-resized crop and flip that stage 1 streams with.
"""
from surgery.data import breeds
from surgery.data.imagenet import imagenet_source, locate_imagenet
from surgery.data.transforms import EvalTransform, TrainTransform


class Decoded:
  """A random-access view of an encoded pool with the evaluation crop applied."""

  def __init__(self, pool, transform=None):
    self.pool = pool
    self.transform = transform or EvalTransform()
    self.labels = pool.labels

  def __len__(self) -> int:
    return len(self.pool)

  def __getitem__(self, i) -> dict:
    example = self.transform(self.pool[i])
    return {'image': example['image'], 'label': example['label']}


class ImageNetImages:
  """The reader `surgery.datasets.subpop.Subpopulation` takes, over ImageNet."""
  image_size = 224
  test_split = 'val'

  def __init__(self, config, info_dir: str):
    self.data_dir = config.get('data_dir') or None
    locate_imagenet(self.data_dir)  # missing data: one line, before anything runs
    self.class_index = breeds.Hierarchy(info_dir).class_index
    self.train_transform = TrainTransform()
    self.eval_transform = EvalTransform()  # stage 1's source val accuracy streams with it
    self._pools = {}

  def pool(self, split: str, label_of: dict):
    """`split`'s images of the classes in `label_of` (class index -> label)."""
    key = (split, tuple(sorted(label_of.items())))
    if key not in self._pools:
      by_wnid = {w: label_of[i] for w, i in self.class_index.items() if i in label_of}
      self._pools[key] = imagenet_source(split, self.data_dir, label_of=by_wnid,
                                         class_index=self.class_index)
    return self._pools[key]

  def decoded(self, pool) -> Decoded:
    return Decoded(pool)
