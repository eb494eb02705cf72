r"""The paper's comparison in one command: every method, a component axis, seeds, ablations.

  python -m launch.reproduce --preset=quick --workdir=runs/quick         # ~30 min, 2 CPU cores
  python -m launch.reproduce --preset=quick --ablation --workdir=runs/ablation
  python -m launch.reproduce --preset=paper --workdir=runs/paper         # full length, for a GPU
  python -m launch.reproduce --preset=quick --methods=rme,vae --seeds=1 --workdir=runs/two
  python -m launch.reproduce --preset=quick --methods=rme,vae --datasets=mnist,fashion_mnist \
      --networks=small,conv_small --data_dir='data/{dataset}' --workdir=runs/datasets

Methods (rows): rme, vae, vae_matched (a VAE whose one encoder has about as
many parameters as RME's M encoders), mixture, boosted, savae, vae_svi
(vae+svi), iaf, hf, iwae; RME also at every M of the preset's component grid.
Each cell (method, M, seed) trains through the same trainer and is evaluated
on the test set by importance sampling. --datasets and --networks add grid
axes (default mnist and small; cells and run directories name them only when
they are not the default, so existing MNIST cells keep their ids): every
method then runs on every dataset with every network size. Several datasets
need --data_dir with {dataset} in it; vae_matched is dense-only and is left out
for conv networks; colour datasets (svhn, celeba) need a conv network. With --ablation the grid is instead
RME's ablations (lambda, delta, eps mode, schedule, warm start, M, KL versus
entropy), each evaluated on the validation set; --ablation_base=rme_iw or
rme_iw_enc ablates that variant instead, and --ablation_axes picks axes, e.g.
  python -m launch.reproduce --preset=compare40 --ablation --ablation_base=rme_iw_enc \
      --ablation_axes=kl_weight,num_components,schedule --seeds=1 --workdir=runs/ablate40

Presets:
  quick  5 epochs of all 50,000 training images, a new component every half
         epoch, seeds 0 and 1, K = 500 on the first 5,000 test images
         (2,000 validation images for --ablation).
  paper  200 epochs, a new component every 20 epochs, seeds 0, 1, 2, M in
         1, 2, 3, 4, 6, 8, K = 5000 on all 10,000 test images.
  long   the 200-epoch comparison for this CPU: vae, vae_matched, iwae, rme,
         iaf, rme_iw, mixture_iw, iwae_dreg, rme_iw_enc (seeds 0 and 1) and savae (seed 0,
         run last), M = 4, a new component every 20 epochs, K = 5000 on all
         10,000 test images (plain and stratified estimates, standard errors),
         and validation log p(x) (K = 100, 1,000 images) every 10 epochs in
         each run's history.json (time-to-quality).
  compare40  the importance-weighted methods at the main job's length (40
         epochs, a component every 3): rme, rme_iw, rme_iw_enc, mixture_iw (SIWAE), iwae,
         iwae_dreg, vae_matched, iaf, savae; seeds 0-2; K = 1000 on all test
         images (plain and stratified); validation log p(x) every 2 epochs.

Methods also include rme_iw (RME whose decoder and weights train on the
importance-weighted mixture bound), mixture_iw (SIWAE) and iwae_dreg (IWAE
with DReG encoder gradients). Besides the tables, the grid draws validation
log p(x) against epochs and against training seconds for every method
(valid_ll_vs_epochs.png, valid_ll_vs_seconds.png) from the runs' history.json,
when the preset records it; the seconds are the runs' own, or with --step_costs
derived from a benchmark of the preset's methods, free of the grid's load:
  python -m launch.benchmark --grid_preset=long --output=costs.json
  python -m launch.reproduce --preset=long --step_costs=costs.json ...

Writes into --workdir: cells.json, cells.csv (every cell), table.md (mean ±
std over seeds) or ablation.md and ablation_cells.json/.csv, ll_vs_components.png, ll_vs_inference_time.png,
samples.png, reconstructions.png; training runs live in runs/, finished cells
in cells/, and a copy of each run's history.json in histories/. Rerunning the
same command trains nothing that is finished. --reports_only rewrites the
reports from what a folder holds without training, so committed results (a
copy of cells.json and histories/) rebuild alone:
  python -m launch.reproduce --preset=long --reports_only --workdir=results/long
"""

import dataclasses
import logging
import os

from absl import app
from absl import flags

from launch import common

flags.DEFINE_string('preset', 'quick', 'Grid and training length: quick, paper, long or compare40.')
flags.DEFINE_string('workdir', 'runs/reproduce', 'Output directory (resumed if it exists).')
flags.DEFINE_string('data_dir', 'data/mnist',
                    'Directory with the dataset\'s files (mnist: mnist.npz, which ./run.sh '
                    'prepares); {dataset} in it is replaced by each dataset\'s name, which '
                    'several --datasets need (e.g. data/{dataset}).')
flags.DEFINE_list('datasets', ['mnist'],
                  'Dataset axis of the grid: any of mnist, binarized_mnist, omniglot, '
                  'fashion_mnist, caltech101_silhouettes, svhn, celeba (README, "Datasets").')
flags.DEFINE_list('networks', ['small'],
                  'Network axis of the grid: any of small, large (dense), conv_small, conv_large.')
flags.DEFINE_list('methods', None, 'Methods to run (default: all of the preset).')
flags.DEFINE_integer('seeds', None, 'Use seeds 0..N-1 (default: the preset\'s).')
flags.DEFINE_list('components', None, 'RME\'s component grid, e.g. 2,4,8 (default: the preset\'s).')
flags.DEFINE_boolean('ablation', False, 'Run RME\'s ablation grid on the validation set instead.')
# grid.ABLATION_BASES; spelled out because grid loads TensorFlow, which this
# launcher imports only after the flags are checked.
flags.DEFINE_enum('ablation_base', 'rme', ['rme', 'rme_iw', 'rme_iw_enc'],
                  'With --ablation: the variant whose settings are changed one at a time.')
flags.DEFINE_list('ablation_axes', None,
                  'With --ablation: only these axes (e.g. kl_weight,num_components,schedule; '
                  'default: all).')
flags.DEFINE_integer('epochs', None, 'Override the preset\'s epochs.')
flags.DEFINE_float('epochs_per_component', None,
                   'Override the preset\'s recursion budget (epochs before the next component).')
flags.DEFINE_integer('num_importance_samples', None, 'Override the preset\'s K.')
flags.DEFINE_integer('test_examples', None,
                     'Override the preset\'s number of test (or, with --ablation, validation) '
                     'images (0: all).')
flags.DEFINE_integer('train_examples', None, 'Use only the first N training images (smoke runs).')
flags.DEFINE_integer('batch_size', 100, 'Training batch size.')
flags.DEFINE_boolean('xla', True, 'Compile training and evaluation with XLA.')
flags.DEFINE_string('step_costs', '',
                    'The --output of `launch/benchmark.py --grid_preset=<this preset>`: '
                    'curves.md and valid_ll_vs_seconds.png then put each run\'s validation '
                    'log p(x) against the training seconds its steps would take at the '
                    'benchmark\'s cost per step (measured side by side, free of the load the '
                    'grid ran beside) instead of the seconds the runs measured.')
flags.DEFINE_boolean('reports_only', False,
                     'Train nothing: rewrite the reports of the finished cells in --workdir '
                     '(cells/ or cells.json, with the runs\' histories or their copies in '
                     'histories/), e.g. --workdir=results/long to rebuild committed results.')
FLAGS = flags.FLAGS


def _positive(name, value, low=1):
  if value is not None and value < low:
    raise common.errors.ConfigError(f'invalid flag: {name}={value}; allowed: an integer >= {low}')


def main(argv):
  del argv
  from rec_vae_tf import config as config_lib  # light: no TensorFlow
  from rec_vae_tf.experiments import grid  # light until a cell runs
  if FLAGS.preset not in grid.PRESETS:
    raise common.errors.ConfigError(
        f'invalid flag: preset={FLAGS.preset!r}; allowed: one of {", ".join(grid.PRESETS)}')
  preset = grid.PRESETS[FLAGS.preset]
  _positive('seeds', FLAGS.seeds)
  _positive('epochs', FLAGS.epochs)
  _positive('num_importance_samples', FLAGS.num_importance_samples)
  _positive('test_examples', FLAGS.test_examples, 0)
  _positive('train_examples', FLAGS.train_examples, 0)
  try:
    components = [int(c) for c in FLAGS.components] if FLAGS.components is not None else None
  except ValueError:
    raise common.errors.ConfigError(
        f'invalid flag: components={",".join(FLAGS.components)}; allowed: integers') from None
  if FLAGS.epochs_per_component is not None and not FLAGS.epochs_per_component > 0:
    raise common.errors.ConfigError(
        f'invalid flag: epochs_per_component={FLAGS.epochs_per_component}; allowed: a number > 0')
  changes = {k: v for k, v in (('epochs', FLAGS.epochs),
                               ('epochs_per_component', FLAGS.epochs_per_component),
                               ('num_importance_samples', FLAGS.num_importance_samples),
                               ('train_examples', FLAGS.train_examples)) if v is not None}
  if FLAGS.test_examples is not None:
    changes['test_examples' if not FLAGS.ablation else 'valid_examples'] = FLAGS.test_examples
  preset = dataclasses.replace(preset, **changes)
  step_seconds = grid.load_step_seconds(FLAGS.step_costs) if FLAGS.step_costs else None
  base = config_lib.Config(data_dir=FLAGS.data_dir, xla=FLAGS.xla, batch_size=FLAGS.batch_size,
                           num_importance_samples=preset.num_importance_samples)
  cells = grid.plan(base, preset, ablation=FLAGS.ablation, ablation_base=FLAGS.ablation_base,
                    ablation_axes=FLAGS.ablation_axes, variants=FLAGS.methods,
                    seeds=range(FLAGS.seeds) if FLAGS.seeds else None, component_grid=components,
                    datasets=FLAGS.datasets, networks=FLAGS.networks)
  if FLAGS.reports_only:
    _write_reports_only(grid, cells, preset, step_seconds)
    return
  for data_dir, dataset in sorted({(c.config.data_dir, c.config.dataset) for c in cells}):
    common.check_data_dir(data_dir, dataset)
  common.claim_workdir(FLAGS.workdir)  # writable and locked, before TensorFlow loads
  for cell in cells:
    common.memory.check(cell.config)
  common.log(f'preset {FLAGS.preset}: {preset.description}')
  # Every cell builds its own compiled functions by design; TensorFlow's
  # "retracing" warnings about that are noise here.
  logging.getLogger('tensorflow').setLevel(logging.ERROR)
  # Data and networks: what each cell's config selects (rec_vae_tf.models.builders).
  rows = grid.run_grid(cells, FLAGS.workdir, num_importance_samples=preset.num_importance_samples,
                       test_examples=preset.test_examples, valid_examples=preset.valid_examples,
                       stratified=preset.stratified, log=common.log)
  reports = grid.write_reports(rows, FLAGS.workdir, step_seconds)
  if not FLAGS.ablation:
    grid.save_pictures(rows, FLAGS.workdir, num_components=preset.num_components)
  _log_reports(reports)


def _write_reports_only(grid, cells, preset, step_seconds):
  """--reports_only: the reports of the cells finished in --workdir; nothing trains."""
  if not os.path.isdir(FLAGS.workdir):
    raise common.errors.ConfigError(f'invalid flag: workdir={FLAGS.workdir}: no such directory')
  rows, missing = grid.finished_rows(cells, FLAGS.workdir, preset.stratified)
  if not rows:
    raise common.errors.ConfigError(
        f'--reports_only: none of the {len(cells)} cells of this grid finished in {FLAGS.workdir}')
  common.claim_workdir(FLAGS.workdir, what='reports')
  if missing:
    common.log(f'{len(missing)} of {len(cells)} cells not finished, left out: '
               + ', '.join(c.cell_id for c in missing))
  _log_reports(grid.write_reports(rows, FLAGS.workdir, step_seconds))


def _log_reports(reports):
  for name, text in reports.items():
    common.log(f'\n{name}:\n{text}')
  common.log(f'wrote {", ".join(reports)}, cells.json, cells.csv and the plots to {FLAGS.workdir}')


if __name__ == '__main__':
  app.run(common.run(main), flags_parser=common.parse_flags)
