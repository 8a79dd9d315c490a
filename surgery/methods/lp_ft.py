"""Linear probe, then fine-tune (LP-FT; Kumar et al., ICLR 2022), in one run.

Stage 1 fits the head alone on the frozen body's features: one run of each head option
at each lr of `head_lrs`, on the runner's frozen-prefix cache, so each costs about a
pass over cached features. Validation picks one (its best epoch; ties go to the option
and lr listed first). Stage 2 starts the `body` method at `body_lr` from that head and
trains it for the config's epochs, keeping its best epoch as any run does. The body
never trains twice and no lr is searched for it.

Why: fine-tuning from the source head moves the features to fit a head that is wrong
for the target (Kumar et al.'s feature distortion). On CIFAR-Flip that costs `all` and
Auto-RGN about 25 points against `last`; from the fitted head they gain on it instead
(results/selection/README.md).

Measured and dropped: letting the probed head itself stand as epoch 0, kept where no
body epoch beats it on validation. Its validation score is a maximum over epochs and
lrs, inflated by the noise of 100 images, so it won where fine-tuning was better on
test (CIFAR-Flip: the head's 81.3 % against 82.8 % and 83.2 % without it; motion_blur
under Auto-RGN: 68.4 % against 75.2 %).

Two methods, the same settings but for the body: `lp_ft` (Adam on every parameter, the
paper's `all`) and `lp_rgn` (Auto-RGN, its section's settings). Their rows name the
head run in the `picked` column; every stage's validation curve goes to
WORKDIR/<method>/<shift>_seed<seed>.json. Settings are the same for every shift.
"""
import json
import os

from surgery.errors import SurgeryError
from surgery.io import atomic_write
from surgery.methods.registry import Method
from surgery.report.store import PICKED

DEFAULTS = dict(head_lrs=(1e-1, 1e-2, 1e-3), body_lr=1e-3)


def best_head(scores) -> int:
  """The index of the best (head option, lr) run by its best validation score; ties
  go to the run listed first."""
  return min(range(len(scores)), key=lambda i: (-scores[i], i))


def fit(ctx, body: str):
  """(the body run, its start's (head option, lr), every stage's validation curve)."""
  s = ctx.settings
  if not ctx.head_options:
    raise SurgeryError(f'{body} from a probed head needs a model with a head option')
  heads = [(h, float(lr)) for h in ctx.head_options for lr in s['head_lrs']]
  runs = [ctx.start(h, lr) for h, lr in heads]
  for run in runs:
    for _ in range(ctx.epochs):
      run.epoch()
  metric = runs[0].runner.metric
  pick = best_head([r.best_val for r in runs])
  curves = {f'{h}@{lr:g}': [e[f'val_{metric}'] for e in r.history]
            for (h, lr), r in zip(heads, runs)}
  start = runs[pick].best
  print(f'{body} from the head: ' + ', '.join(
      f'{h}@{lr:g} {r.best_val:.3f}' + ('*' if i == pick else '')
      for i, ((h, lr), r) in enumerate(zip(heads, runs))) + ' (* picked)', flush=True)
  del runs  # the head runs' weights are let go before the body trains
  body_lr = float(s['body_lr'])
  run = ctx.start(body, body_lr, init=start)
  for _ in range(ctx.epochs):
    run.epoch()
  curves[f'{body}@{body_lr:g}'] = [e[f'val_{metric}'] for e in run.history]
  return run, heads[pick], curves


def _checker(name):
  def check(section):
    section = {**DEFAULTS, **dict(section)}  # a config may give only some fields
    lrs = section.get('head_lrs')
    if not lrs or any(isinstance(v, bool) or not float(v) > 0 for v in lrs):
      raise SurgeryError(f'{name}.head_lrs must be positive learning rates, got {lrs!r}')
    if not float(section.get('body_lr', 0)) > 0:
      raise SurgeryError(f'{name}.body_lr must be a positive learning rate, got '
                         f'{section.get("body_lr")!r}')
  return check


def _method(name, body, order):
  def train(ctx):
    run, (head, lr), curves = fit(ctx, body)
    fields, history, _ = run.finish()
    picked = f'{head} lr={lr:g}, then {body} lr={float(ctx.settings["body_lr"]):g}'
    return {**fields, PICKED: picked}, history, [curves]

  def save(workdir, run, records):
    atomic_write(os.path.join(workdir, name, f'{run.shift}_seed{run.seed}.json'),
                 json.dumps(records[0], indent=1))

  return Method(name, train=train, section=name, defaults=dict(DEFAULTS), check=_checker(name),
                save_records=save, records_folder=name, order=order)


METHODS = (_method('lp_ft', 'all', 196), _method('lp_rgn', 'auto_rgn', 197))
