"""The `erm` source stage: it keeps the epoch that source validation picks, resumes
mid-phase with that pick, and its cosine schedule decays to 0. The data is a small
in-memory dataset registered here, so the stage itself is what is tested."""
import ml_collections
import numpy as np
import pytest

from configs import living17
from experiments import source_stage
from surgery import datasets, models
from surgery.checkpoints import save_params
from surgery.data.sources import ArraySource
from surgery.errors import SurgeryError

TINY = dict(num_classes=2, new_head=True, width=2, stage_sizes=(1, 1, 1, 1), dtype='float32')


class _TwoBlobs:
  """Two classes of 16x16 images, dark and bright: a source split to train on."""
  num_classes, image_size, metrics, select_metric = 2, 16, ('acc',), 'acc'
  train_transform = eval_transform = None

  def source(self, split):
    n = {'train': 24, 'val': 20}[split]
    rng = np.random.RandomState(n)
    labels = np.arange(n) % 2
    images = np.clip(rng.normal(60 + 120 * labels[:, None, None, None], 40, (n, 16, 16, 3)),
                     0, 255).astype(np.uint8)
    return ArraySource(images, labels)


def create(config, name):
  return _TwoBlobs()


datasets.register('two_blobs', __name__)


def _config(tmp_path, **stage):
  c = living17.get_config()
  c.dataset = 'two_blobs'
  c.model.resnet50.update(TINY)
  c.init_checkpoint = save_params(str(tmp_path / 'init'), models.create('resnet50', **TINY).init(1))
  c.source_stage = ml_collections.ConfigDict(dict(
      kind='erm', epochs=3, lr=1e-2, optimizer='adam', weight_decay=0.0, schedule='constant',
      batch_size=8, workers=0, seed=0, checkpoint_every=100, select='best',
      select_metric='acc', augment=False))
  c.source_stage.update(stage)
  return c


def _spec():
  return models.create('resnet50', **TINY)


def _train(config, workdir):
  return source_stage.train_or_load(config, str(workdir), _spec())


def _same(a, b):
  import jax
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                  jax.tree_util.tree_leaves(b)))


@pytest.mark.slow
def test_best_epoch_is_kept_and_equals_a_run_that_stopped_there(tmp_path, monkeypatch):
  scores = iter([0.5, 0.9, 0.7])  # source val accuracy after epochs 1, 2, 3
  # (the 'last' runs evaluate once more, at the end of their phase)
  monkeypatch.setattr(source_stage, '_val_accuracy', lambda *a: next(scores, 0.0))
  best = _train(_config(tmp_path), tmp_path / 'best')
  two = _train(_config(tmp_path, epochs=2, select='last'), tmp_path / 'two')
  three = _train(_config(tmp_path, select='last'), tmp_path / 'three')
  assert _same(best, two)  # epoch 2's weights, bitwise
  assert not _same(best, three)


class _Interrupt(Exception):
  pass


@pytest.mark.slow
def test_resume_mid_phase_keeps_the_best_so_far(tmp_path, monkeypatch):
  scores = {1: 0.9, 2: 0.5, 3: 0.7}  # the first epoch is the best
  calls = []

  def scripted(counter, state, *rest):
    calls.append(1)
    return scores[len(calls)]

  monkeypatch.setattr(source_stage, '_val_accuracy', scripted)
  whole = _train(_config(tmp_path), tmp_path / 'whole')
  calls.clear()

  real = source_stage.surgery.make_train_step
  steps = []

  def interrupted(module, tx, **kwargs):
    step = real(module, tx, **kwargs)

    def run(*args):
      steps.append(1)
      if len(steps) == 3 + 2:  # 3 steps per epoch: two steps into epoch 2
        raise _Interrupt
      return step(*args)
    return run

  monkeypatch.setattr(source_stage.surgery, 'make_train_step', interrupted)
  with pytest.raises(_Interrupt):
    _train(_config(tmp_path), tmp_path / 'resumed')
  monkeypatch.setattr(source_stage.surgery, 'make_train_step', real)
  resumed = _train(_config(tmp_path), tmp_path / 'resumed')
  assert len(calls) == 3  # epoch 1 before the interruption, 2 and 3 after it
  assert _same(whole, resumed)


def test_cosine_schedule_decays_to_zero_over_the_phase():
  config = ml_collections.ConfigDict(dict(source_stage=dict(
      kind='erm', epochs=2, lr=0.1, optimizer='adam', weight_decay=0.0, schedule='cosine',
      augment=True, select='last')))
  (phase,) = source_stage.phases(config, _spec())
  assert phase.augment and not phase.select_best and phase.group_spec == 'all'
  tx = phase.optimizer(10)
  params = {'w': np.ones(1, np.float32)}
  state = tx.init(params)
  sizes = []
  for _ in range(10):
    updates, state = tx.update({'w': np.ones(1, np.float32)}, state, params)
    sizes.append(float(-updates['w'][0]))
  # Adam on a constant gradient steps by the lr itself: 0.1 * (1 + cos(pi * t / 10)) / 2.
  want = [0.05 * (1 + np.cos(np.pi * t / 10)) for t in range(10)]
  assert sizes == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize('field, value, words', [
    ('kind', 'dpo', 'source_stage.kind must be one of lp_ft, erm'),
    ('schedule', 'linear', 'source_stage.schedule must be one of constant, cosine'),
    ('select', 'worst', 'source_stage.select must be one of best, last'),
    ('optimizer', 'lamb', 'source_stage.optimizer must be one of adam, adamw, sgd'),
    ('select_metric', 'worst_group_acc', 'source_stage.select_metric must be one of acc'),
    ('epochs', -1, 'source_stage.epochs must be an integer >= 0'),
    ('augment', 'yes', 'source_stage.augment must be true or false'),
])
def test_bad_fields_are_one_line(tmp_path, field, value, words):
  config = _config(tmp_path)
  config.source_stage = ml_collections.ConfigDict({**config.source_stage.to_dict(), field: value})
  with pytest.raises(SurgeryError, match=words):
    source_stage.check(config)


def test_source_validation_accuracy_is_the_models_accuracy_on_the_val_split(tmp_path, capsys):
  import surgery
  variables = _train(_config(tmp_path, epochs=1), tmp_path / 'one')
  printed = float(capsys.readouterr().out.split('source val acc ')[1].split()[0])
  val = _TwoBlobs().source('val')  # 20 images in batches of 8: the padding must not count
  predict = surgery.make_predict(_spec().module)
  state = {k: v for k, v in variables.items() if k != 'params'}
  preds = surgery.train.predictions(predict, variables['params'], state, val.images, 7)
  assert printed == pytest.approx(float(np.mean(preds == val.labels)), abs=1e-4)


def test_every_phase_reports_its_source_val_accuracy_and_the_summary_shows_it(tmp_path, capsys):
  config = _config(tmp_path)
  config.source_stage = ml_collections.ConfigDict(dict(
      kind='lp_ft', head_epochs=1, all_epochs=1, head_lr=1e-2, all_lr=1e-3, batch_size=8,
      workers=0, seed=0, checkpoint_every=100))
  _train(config, tmp_path / 'lpft')
  out = capsys.readouterr().out
  phases = source_stage.read_report(str(tmp_path / 'lpft'))
  assert [p['phase'] for p in phases] == ['head', 'all']
  for p in phases:
    assert 0.0 <= p['source_val_acc'] <= 1.0 and p['source_val_images'] == 20
    assert f'source stage ({p["phase"]}) done: source val acc {p["source_val_acc"]:.4f}' in out
  lines = source_stage.summary_lines(str(tmp_path / 'lpft'))
  assert lines[0] == '## Source stage'
  assert f'| head | last | 1 | {100 * phases[0]["source_val_acc"]:.1f} (20 images) |' in lines
  # A later run loads the model and says how good it was.
  _train(config, tmp_path / 'lpft')
  assert 'source val acc after head' in capsys.readouterr().out
  assert source_stage.summary_lines(str(tmp_path / 'nothing_here')) == []
