r"""Speed benchmark: training step, amortized inference, SA-VAE, importance sampling.

  python -m launch.benchmark --output=benchmark.json

RME's claim is accuracy at the price of one feed-forward pass; its training
costs M decoder passes per example. This program measures both side by side,
in one process on whatever device TensorFlow sees (a GPU if there is one):

  * training step time per example: the VAE and RME with M = --components,
    with and without XLA (and, with --mixed_precision_rows, with bfloat16);
    with --bound_rows, each importance-weighted bound beside the bound it
    replaces: rme with mixture_bound=iw against rme, mixture (SIWAE) against
    mixture, iwae with DReG against iwae (M = --inference_components samples);
    with --strategy_rows, the VAE and RME steps on the tf.distribute path
    (MirroredStrategy with one replica) beside the default path; with
    --grid_preset, every method of a launch/reproduce preset as its cells
    train it (their own networks, bounds and schedules) at each active
    component count: the seconds per step `reproduce --step_costs` uses for
    the validation curves' time axis, free of the load the grid ran beside;
  * amortized inference (one encoder pass, the posterior's weights, means and
    scales) per batch: the VAE and RME(M = --inference_components); and
    SA-VAE: the VAE's encoder followed by K = --savae_steps refinement steps
    (`rec_vae_tf.methods.refinement`, noise drawn outside XLA and counted);
  * importance-sampled evaluation throughput in images per second at
    K = --num_importance_samples (the `likelihood.Evaluator` code path);
  * the achieved FLOP rate of the training steps and of the evaluation, as a
    fraction of a dense float32 matmul peak measured in the same run;
  * the share of step time spent waiting on the input pipeline: `next()` on
    the real `pipeline.make_train_dataset` (synthetic uint8 images of MNIST size,
    dynamic binarization, prefetching), timed around each training step.

Every measurement is warmed up (traced and compiled) first; then all of them
are timed in interleaved rounds (--repeats), so that load from other
processes falls on all of them alike, and the medians are reported. Ratios
(RME/VAE, SA-VAE/RME, achieved/peak) are printed with the issue's targets and
written as JSON (--output).

FLOPs are counted analytically, 2*m*n*k per matmul of the dense layers
(biases, activations and the density math are not counted):
  enc(M) = M * 2 * (P*H_1 + H_1*H_2 + ... + H_L*D + H_L*D + H_L*1)  per example
           (layers, loc head, scale head, eps head)
  dec    = 2 * (D*H_L + ... + H_2*H_1 + H_1*P)                 per latent sample
  training step  = 3 * B * (enc(M) + S * M * dec)   (backward ~ 2 x forward; RME's
                   second backward pass through the decoder is not counted)
  evaluation     = B * (enc(M) + K * dec)           per batch of B images
  peak           = 2 n^3 / t, fastest of float32 n x n matmuls over --peak_sizes,
                   with and without XLA
Cost of a default run: about 1.5 minutes on a 2-core CPU (half of it tracing
and XLA compilation); peak memory about 1 GB. Load from other processes
changes the absolute numbers a lot and the ratios less (README, "Performance").
"""

import logging
import os
import platform
import shutil
import statistics
import tempfile
import time

from absl import app
from absl import flags

from launch import common
from rec_vae_tf import errors

flags.DEFINE_string('output', '', 'Write the measurements and ratios as JSON to this file.')
flags.DEFINE_list('components', ['2', '4', '8'], 'RME mixture sizes M for the training step.')
flags.DEFINE_integer('inference_components', 4,
                     'M of the RME model for amortized inference and the evaluation.')
flags.DEFINE_list('savae_steps', ['5', '20'], 'SA-VAE refinement steps K to time.')
flags.DEFINE_list('hidden_units', ['200', '200'], 'Hidden layer widths (default: the small network).')
flags.DEFINE_integer('latent_dim', 50, 'D, latent dimensions.')
flags.DEFINE_integer('batch_size', 100, 'B for training, inference and evaluation.')
flags.DEFINE_integer('num_importance_samples', 5000, 'K for the evaluation throughput.')
flags.DEFINE_integer('eval_chunk', 500, 'Importance samples per compiled chunk.')
flags.DEFINE_integer('steps_per_repeat', 20, 'Training steps per timed call.')
flags.DEFINE_integer('calls_per_repeat', 20,
                     'Back-to-back inference calls per timing (SA-VAE: a quarter as many).')
flags.DEFINE_integer('repeats', 7, 'Interleaved timing rounds (medians over them).')
flags.DEFINE_integer('pipeline_steps', 200, 'Training steps timed around next() per model.')
flags.DEFINE_integer('train_examples', 60000, 'Synthetic training images for the input pipeline.')
flags.DEFINE_list('peak_sizes', ['1024', '2048', '4096'], 'n of the n x n matmuls timed for the peak.')
flags.DEFINE_boolean('bound_rows', True,
                     'Also time the training steps of rme with the importance-weighted bound, '
                     'mixture (elbo and iw) and iwae (plain and DReG) at M = '
                     '--inference_components, for the cost ratios of the IW bounds.')
flags.DEFINE_boolean('strategy_rows', True,
                     'Also time the VAE and RME(M = --inference_components) training steps on the '
                     'tf.distribute path (MirroredStrategy, one replica on this device) beside '
                     'the default path.')
flags.DEFINE_boolean('no_xla_rows', True, 'Also time every training step without XLA.')
flags.DEFINE_boolean('mixed_precision_rows', True,
                     'Also time the VAE and RME(M = --inference_components) steps with mixed precision.')
flags.DEFINE_string('profile_dir', '',
                    'Also capture a TensorFlow profiler trace of one more round of the RME '
                    '(M = --inference_components, XLA) training step and of the evaluation into '
                    'this directory (view with TensorBoard\'s profile plugin), and print the '
                    'busiest operations.')
flags.DEFINE_string('grid_preset', '',
                    'Also time the training step of every method of this launch/reproduce '
                    'preset (e.g. long) with its cells\' own configs (network, bound, schedule, '
                    'batch size; seed 0, M of the method table), at every active-component '
                    'count its schedule passes through. --hidden_units and --latent_dim do not '
                    'apply to these rows. The JSON\'s grid_step_seconds is what '
                    '`reproduce --step_costs` turns into training seconds along the validation '
                    'curves. Empty: no such rows.')
flags.DEFINE_list('grid_methods', None, 'With --grid_preset: only these of its methods '
                  '(default: all).')
FLAGS = flags.FLAGS

NUM_PIXELS = 784
TARGETS = {  # ratio name -> (comparison, bound), from the issue
    'train_rme_m4_over_vae_xla': ('<=', 3.0),
    'inference_rme_m4_over_vae': ('<=', 2.0),
    'inference_savae20_over_rme_m4': ('>=', 20.0),
    'eval_flops_over_peak': ('>=', 0.5),
    'train_rme_m4_flops_over_peak_xla': ('>=', 0.25),
    'input_wait_fraction': ('<', 0.05),
    'train_rme_m4_iw_over_rme_m4_xla': ('<=', 1.10),
}


def _int_list(name, values, low):
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise errors.UserError(f'--{name}={",".join(values)}; allowed: comma-separated integers') from None
  if not out or min(out) < low:
    raise errors.UserError(f'--{name}={",".join(values)}; allowed: integers >= {low}')
  return out


def _check_flags():
  """Validates the flags before TensorFlow loads; returns the parsed lists."""
  parsed = {
      'components': _int_list('components', FLAGS.components, 1),
      'savae_steps': _int_list('savae_steps', FLAGS.savae_steps, 1),
      'hidden_units': _int_list('hidden_units', FLAGS.hidden_units, 1),
      'peak_sizes': _int_list('peak_sizes', FLAGS.peak_sizes, 1),
  }
  for name in ('inference_components', 'latent_dim', 'batch_size', 'num_importance_samples',
               'eval_chunk', 'steps_per_repeat', 'calls_per_repeat', 'repeats', 'pipeline_steps'):
    if FLAGS[name].value < 1:
      raise errors.UserError(f'--{name}={FLAGS[name].value}; allowed: an integer >= 1')
  if FLAGS.inference_components not in parsed['components']:
    parsed['components'].append(FLAGS.inference_components)  # its training step is timed too
  if FLAGS.train_examples < FLAGS.batch_size:
    raise errors.UserError(f'--train_examples={FLAGS.train_examples}; allowed: >= --batch_size '
                           f'({FLAGS.batch_size})')
  if FLAGS.grid_preset or FLAGS.grid_methods:
    from rec_vae_tf.experiments import grid  # pylint: disable=g-import-not-at-top  (light)
    if FLAGS.grid_preset not in grid.PRESETS:
      raise errors.UserError(f'--grid_preset={FLAGS.grid_preset!r}; allowed: one of '
                             f'{", ".join(grid.PRESETS)}' +
                             (' (--grid_methods needs it)' if not FLAGS.grid_preset else ''))
    variants = grid.PRESETS[FLAGS.grid_preset].variants
    unknown = [m for m in FLAGS.grid_methods or () if m not in variants]
    if unknown:
      raise errors.UserError(f'--grid_methods contains {unknown[0]!r}; allowed: the methods of '
                             f'--grid_preset={FLAGS.grid_preset} ({", ".join(variants)})')
  if FLAGS.output:
    directory = os.path.dirname(os.path.abspath(FLAGS.output))
    if not os.path.isdir(directory):
      raise errors.UserError(f'--output={FLAGS.output}: directory {directory} does not exist')
  return parsed


# ----------------------------------------------------------------- FLOPs

def encoder_flops(num_components, hidden_units, latent_dim, num_pixels=NUM_PIXELS):
  """Forward multiply-add FLOPs of M encoders for one example (amortized eps head)."""
  widths = [num_pixels] + list(hidden_units)
  trunk = sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))
  heads = 2 * hidden_units[-1] * (2 * latent_dim + 1)
  return num_components * (trunk + heads)


def decoder_flops(hidden_units, latent_dim, num_pixels=NUM_PIXELS):
  """Forward multiply-add FLOPs of the decoder for one latent sample."""
  widths = [latent_dim] + list(reversed(hidden_units)) + [num_pixels]
  return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))


def train_step_flops(batch, num_components, num_samples, hidden_units, latent_dim):
  forward = batch * (encoder_flops(num_components, hidden_units, latent_dim) +
                     num_samples * num_components * decoder_flops(hidden_units, latent_dim))
  return 3 * forward


def eval_flops(batch, num_components, num_importance_samples, hidden_units, latent_dim):
  return batch * (encoder_flops(num_components, hidden_units, latent_dim) +
                  num_importance_samples * decoder_flops(hidden_units, latent_dim))


# ----------------------------------------------------------- measurements

def _device_name(tf):
  gpus = tf.config.list_physical_devices('GPU')
  if gpus:
    details = tf.config.experimental.get_device_details(gpus[0])
    return f'GPU: {details.get("device_name", gpus[0].name)} (x{len(gpus)})'
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return f'CPU: {model}, {os.cpu_count()} cores (no GPU visible)'


class _Case:
  """One timed measurement: `run()` returns seconds for `units` units of work."""

  def __init__(self, name, run, units, unit, flops_per_unit=None, group=''):
    self.name, self.run, self.units, self.unit = name, run, units, unit
    self.flops_per_unit, self.group = flops_per_unit, group
    self.seconds = []


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _repeat(count, fn):
  for _ in range(count):
    fn()


def main(argv):
  del argv
  parsed = _check_flags()
  if FLAGS.profile_dir:
    # Per-operation events inside XLA clusters (read once, when XLA starts).
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_enable_xprof_traceme=true').strip()
  # Every Trainer traces its own step once; TensorFlow would warn about "retracing"
  # across the instances. Real retraces are counted and reported instead.
  logging.getLogger('tensorflow').setLevel(logging.ERROR)
  import numpy as np  # pylint: disable=g-import-not-at-top  (TF loads after validation)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rec_vae_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.data import pipeline as data_lib  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.evaluation import likelihood  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.models import networks  # pylint: disable=g-import-not-at-top
  from rec_vae_tf import methods  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.methods import refinement  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  hidden = tuple(parsed['hidden_units'])
  latent = FLAGS.latent_dim
  batch = FLAGS.batch_size
  ref_m = FLAGS.inference_components
  wall_start = time.perf_counter()
  device = _device_name(tf)
  common.log(f'device: {device}')
  workdir = tempfile.mkdtemp(prefix='rec_vae_benchmark_')  # trainers need one; nothing is saved

  def make_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels,
                    mixed_precision=False):
    del hidden_units  # the benchmark's own widths
    return networks.build_networks(num_components, hidden, latent_dim, eps_mode, seed, num_pixels,
                                   mixed_precision=mixed_precision)

  def make_trainer(num_components, xla, mixed_precision=False):
    method = 'vae' if num_components == 1 else 'rme'
    cfg = config_lib.default_config(
        method, num_components=num_components, latent_dim=latent, batch_size=batch, xla=xla,
        schedule='simultaneous', mixed_precision=mixed_precision).validate()
    return trainer_lib.Trainer(cfg, workdir, make_networks=make_networks, num_pixels=NUM_PIXELS)

  rng = np.random.default_rng(0)
  x = tf.constant((rng.random([batch, NUM_PIXELS]) < 0.3).astype(np.float32))  # [B, P]
  cases = []
  trainers = {}

  # --- training steps
  steps = FLAGS.steps_per_repeat

  def add_train_case(name, tr, num_components, samples=1, dist=None):
    """Times `steps` training steps of `tr` on the fixed batch x (compute only)."""
    data = tf.data.Dataset.from_tensors(x).repeat()  # the input pipeline is timed below
    iterator = iter(data if dist is None else
                    dist.strategy.distribute_datasets_from_function(lambda context: data))
    args = (tf.constant(steps, tf.int32), tr.num_active.read_value(), tf.constant(0, tf.int32))
    run = lambda: _timed(lambda: tr.train_steps(iterator, *args)['mixture_elbo'].numpy())
    trainers[name] = tr
    cases.append(_Case(name, run, steps * batch, 'example',
                       train_step_flops(1, num_components, samples, hidden, latent),
                       group='train'))

  def bench_trainer(method, num_components, samples=1, dist=None, **changes):
    cfg = config_lib.default_config(
        method, num_components=num_components, latent_dim=latent, batch_size=batch, xla=True,
        schedule='simultaneous', num_train_samples=samples, **changes).validate()
    return trainer_lib.Trainer(cfg, workdir, make_networks=make_networks, num_pixels=NUM_PIXELS,
                               distribution=dist)

  train_specs = [('vae', 1)] + [(f'rme_m{m}', m) for m in parsed['components']]
  modes = [('xla', True, False)] + ([('noxla', False, False)] if FLAGS.no_xla_rows else [])
  for mode, xla, mixed in modes + ([('xla_mixed', True, True)] if FLAGS.mixed_precision_rows else []):
    for label, m in train_specs:
      if mixed and label not in ('vae', f'rme_m{ref_m}'):
        continue
      add_train_case(f'train_{label}_{mode}', make_trainer(m, xla, mixed), m)

  # --- the importance-weighted bounds, each beside the bound it replaces (XLA, M = ref_m
  # samples per step for every row: iwae's k = M, the mixtures' one sample per component)
  bound_specs = {  # label -> (method, components, train samples, config changes)
      f'rme_m{ref_m}_iw': ('rme', ref_m, 1, {'mixture_bound': 'iw'}),
      f'mixture_m{ref_m}': ('mixture', ref_m, 1, {}),
      f'mixture_m{ref_m}_iw': ('mixture', ref_m, 1, {'mixture_bound': 'iw'}),
      f'iwae_k{ref_m}': ('iwae', 1, ref_m, {}),
      f'iwae_k{ref_m}_dreg': ('iwae', 1, ref_m, {'dreg': True}),
  }
  if FLAGS.bound_rows:
    for label, (method, m, samples, changes) in bound_specs.items():
      add_train_case(f'train_{label}_xla', bench_trainer(method, m, samples, **changes), m,
                     samples)

  # --- the tf.distribute code path on this one device (MirroredStrategy, one replica),
  # beside the default path (rows train_*_xla above): what "one code path" would cost.
  if FLAGS.strategy_rows:
    from rec_vae_tf.training import distribute  # pylint: disable=g-import-not-at-top
    dist = distribute.get('mirrored')
    for label, m in (('vae', 1), (f'rme_m{ref_m}', ref_m)):
      tr = bench_trainer('vae' if m == 1 else 'rme', m, dist=dist)
      add_train_case(f'train_{label}_mirrored_xla', tr, m, dist=dist)

  # --- a reproduce preset's methods as its cells train them (grid.curve_table's seconds)
  grid_costs = {}  # variant -> {active count: case name}
  grid_batch = {}
  if FLAGS.grid_preset:
    from rec_vae_tf.experiments import grid  # pylint: disable=g-import-not-at-top
    preset = grid.PRESETS[FLAGS.grid_preset]
    cells = grid.plan(config_lib.Config(num_importance_samples=preset.num_importance_samples),
                      preset, variants=FLAGS.grid_methods, seeds=(0,), component_grid=())
    for cell in cells:
      cfg = cell.config
      tr = trainer_lib.Trainer(cfg, workdir, num_pixels=NUM_PIXELS)  # cfg's own networks
      xg = tf.constant((rng.random([cfg.batch_size, NUM_PIXELS]) < 0.3).astype(np.float32))
      grown = cfg.schedule != 'simultaneous' and cfg.num_components > 1
      for active in range(1, cfg.num_components + 1) if grown else [cfg.num_components]:
        name = f'train_grid_{cell.variant}_a{active}'
        frozen = active - 1 if cfg.schedule == 'freeze_earlier' else 0
        args = (tf.constant(steps, tf.int32), tf.constant(active, tf.int32),
                tf.constant(frozen, tf.int32))
        iterator = iter(tf.data.Dataset.from_tensors(xg).repeat())
        run = (lambda tr=tr, iterator=iterator, args=args:
               _timed(lambda: tr.train_steps(iterator, *args)['mixture_elbo'].numpy()))
        trainers[name] = tr
        cases.append(_Case(name, run, steps * cfg.batch_size, 'example', group='grid'))
        grid_costs.setdefault(cell.variant, {})[active] = name
      grid_batch[cell.variant] = cfg.batch_size

  # --- amortized inference: the RME posterior, the VAE posterior, SA-VAE
  # Back-to-back calls, as when serving: one cold call per round would mostly
  # time the thread pool waking up after the previous measurement.
  calls = FLAGS.calls_per_repeat
  savae_calls = max(1, calls // 4)
  num_active = {}
  evaluators = {}
  for label, m in (('vae', 1), (f'rme_m{ref_m}', ref_m)):
    encoder, decoder = make_networks(m, None, latent, 'amortized', seed=0, num_pixels=NUM_PIXELS)
    method = methods.build(
        config_lib.default_config('vae' if m == 1 else 'rme', num_components=m, latent_dim=latent),
        encoder, decoder, num_pixels=NUM_PIXELS)
    evaluators[label] = likelihood.Evaluator(method, xla=True)
    num_active[label] = tf.constant(m, tf.int32)
    ev = evaluators[label]
    run = lambda ev=ev, n=num_active[label]: _timed(lambda: _repeat(  # pylint: disable=protected-access
        calls, lambda: ev._encode(x, n)[0].numpy()))
    cases.append(_Case(f'inference_{label}', run, calls, 'batch',
                       batch * encoder_flops(m, hidden, latent), group='inference'))
  vae_encoder, vae_decoder = evaluators['vae'].encoder, evaluators['vae'].decoder
  for k in parsed['savae_steps']:
    def savae(x, noise, k=k):
      enc = vae_encoder(x)
      log_p = lambda z: vae_decoder.log_prob(x, z[..., None, :])[..., 0]  # [S, B]
      out = refinement.refine_gaussian(
          log_p, enc.loc[:, 0], tf.math.log(enc.scale[:, 0]), num_steps=k, step_size=1.0,
          momentum=0.5, noise=noise, max_grad_norm=5.0, stop_encoder_gradient=True)
      return out.loc, out.scale
    compiled = tf.function(savae, jit_compile=True)
    draw = tf.function(lambda seed, k=k: tf.random.stateless_normal([k, 1, batch, latent], seed=seed))
    seed = tf.constant([1, 2], tf.int64)
    run = (lambda compiled=compiled, draw=draw, seed=seed:
           _timed(lambda: _repeat(savae_calls, lambda: compiled(x, draw(seed))[0].numpy())))
    cases.append(_Case(f'inference_savae{k}', run, savae_calls, 'batch', group='inference'))

  # --- importance-sampled evaluation
  k_is = FLAGS.num_importance_samples
  ev_ref = evaluators[f'rme_m{ref_m}']
  run = lambda: _timed(lambda: ev_ref.log_likelihood(x, num_active[f'rme_m{ref_m}'], k_is,
                                                     FLAGS.eval_chunk, seed=3))
  cases.append(_Case(f'eval_rme_m{ref_m}_k{k_is}', run, batch, 'image',
                     eval_flops(1, ref_m, k_is, hidden, latent), group='eval'))

  # --- matmul peak
  for n in parsed['peak_sizes']:
    a = tf.random.stateless_normal([n, n], seed=[4, n])
    b = tf.random.stateless_normal([n, n], seed=[5, n])
    for mode, xla in (('tf', False), ('xla', True)):
      matmul = tf.function(tf.matmul, jit_compile=xla)
      run = (lambda matmul=matmul, a=a, b=b:
             _timed(lambda: matmul(a, b)[:1, :1].numpy()))
      cases.append(_Case(f'peak_matmul_{n}_{mode}', run, 1, 'matmul', 2 * n ** 3, group='peak'))

  common.log(f'warming up (tracing and compiling) {len(cases)} measurements ...')
  for case in cases:
    case.run()
    case.run()
  common.log(f'timing {FLAGS.repeats} interleaved rounds ...')
  for _ in range(FLAGS.repeats):
    for case in cases:
      case.seconds.append(case.run())

  if FLAGS.profile_dir:
    profiled = [c for c in cases if c.name in (f'train_rme_m{ref_m}_xla', f'eval_rme_m{ref_m}_k{FLAGS.num_importance_samples}')]
    _profile(tf, profiled, FLAGS.profile_dir)

  # --- input pipeline: next() on the real dataset around real steps
  images = rng.integers(0, 256, size=[FLAGS.train_examples, NUM_PIXELS], dtype=np.uint8)
  pipeline = {}
  for label in ('vae', f'rme_m{ref_m}'):
    tr = trainers[f'train_{label}_xla']
    na, zero = tr.num_active.read_value(), tf.constant(0, tf.int32)
    epoch = 0
    iterator = iter(data_lib.make_train_dataset(images, batch_size=batch, seed=0, epoch=epoch))
    waits, totals = [], []
    for i in range(FLAGS.pipeline_steps + 5):
      start = time.perf_counter()
      try:
        xb = next(iterator)
      except StopIteration:  # a new epoch: a new dataset, as in the training loop
        epoch += 1
        iterator = iter(data_lib.make_train_dataset(images, batch_size=batch, seed=0, epoch=epoch))
        start = time.perf_counter()
        xb = next(iterator)
      got = time.perf_counter()
      tr._compiled_step(xb, na, zero, noise=tr._noise(xb))['mixture_elbo'].numpy()  # pylint: disable=protected-access
      if i >= 5:  # the first batches fill the prefetch buffer
        waits.append(got - start)
        totals.append(time.perf_counter() - start)
    pipeline[label] = {'wait_fraction': sum(waits) / sum(totals),
                       'wait_ms_per_step': 1e3 * sum(waits) / len(waits),
                       'step_ms': 1e3 * sum(totals) / len(totals)}

  # --- summary
  timings = {}
  for case in cases:
    median = statistics.median(case.seconds)
    entry = {'median_s': median, 'units': case.units, 'unit': case.unit,
             'seconds_per_unit': median / case.units, 'rounds': len(case.seconds)}
    if case.flops_per_unit:
      entry['gflops_per_s'] = case.flops_per_unit * case.units / median / 1e9
    timings[case.name] = entry
  peak = max(v['gflops_per_s'] for k, v in timings.items() if k.startswith('peak_'))
  for entry in timings.values():
    if 'gflops_per_s' in entry:
      entry['fraction_of_peak'] = entry['gflops_per_s'] / peak

  def per(name):
    return timings[name]['seconds_per_unit']

  ratios = {}
  for label, m in train_specs[1:]:
    for mode, _, _ in modes:
      ratios[f'train_{label}_over_vae_{mode}'] = per(f'train_{label}_{mode}') / per(f'train_vae_{mode}')
  if FLAGS.no_xla_rows:
    for label, _ in train_specs:
      ratios[f'xla_speedup_train_{label}'] = per(f'train_{label}_noxla') / per(f'train_{label}_xla')
  if FLAGS.mixed_precision_rows:
    for label in ('vae', f'rme_m{ref_m}'):
      ratios[f'mixed_precision_speedup_train_{label}'] = (
          per(f'train_{label}_xla') / per(f'train_{label}_xla_mixed'))
  if FLAGS.bound_rows:  # what the importance-weighted bound costs over the one it replaces
    for label, reference in ((f'rme_m{ref_m}_iw', f'rme_m{ref_m}'),
                             (f'mixture_m{ref_m}_iw', f'mixture_m{ref_m}'),
                             (f'iwae_k{ref_m}_dreg', f'iwae_k{ref_m}')):
      ratios[f'train_{label}_over_{reference}_xla'] = (
          per(f'train_{label}_xla') / per(f'train_{reference}_xla'))
  if FLAGS.strategy_rows:  # > 1: the strategy path is slower than the default one
    for label in ('vae', f'rme_m{ref_m}'):
      ratios[f'train_{label}_mirrored_over_default_xla'] = (
          per(f'train_{label}_mirrored_xla') / per(f'train_{label}_xla'))
  ratios[f'inference_rme_m{ref_m}_over_vae'] = per(f'inference_rme_m{ref_m}') / per('inference_vae')
  for k in parsed['savae_steps']:
    ratios[f'inference_savae{k}_over_rme_m{ref_m}'] = (
        per(f'inference_savae{k}') / per(f'inference_rme_m{ref_m}'))
  ratios['eval_flops_over_peak'] = timings[f'eval_rme_m{ref_m}_k{k_is}']['fraction_of_peak']
  for label, _ in train_specs:
    for mode, _, _ in modes:
      ratios[f'train_{label}_flops_over_peak_{mode}'] = timings[f'train_{label}_{mode}']['fraction_of_peak']
  if FLAGS.bound_rows:
    for label in bound_specs:
      ratios[f'train_{label}_flops_over_peak_xla'] = timings[f'train_{label}_xla']['fraction_of_peak']
  if 'vae' in grid_costs:  # each preset method's step against the preset's VAE step
    for variant, names in grid_costs.items():
      for active, name in names.items():
        if variant != 'vae':
          ratios[f'train_grid_{variant}_a{active}_over_vae'] = per(name) / per(grid_costs['vae'][1])
  for label, value in pipeline.items():
    ratios[f'input_wait_fraction_{label}'] = value['wait_fraction']
  ratios['input_wait_fraction'] = max(v['wait_fraction'] for v in pipeline.values())

  targets = {}
  for name, (op, bound) in TARGETS.items():
    if name in ratios:
      value = ratios[name]
      met = value <= bound if op == '<=' else value >= bound if op == '>=' else value < bound
      targets[name] = {'value': value, 'target': f'{op} {bound:g}', 'met': bool(met)}
  # Each trainer's step must have been traced once, its N-step loop once.
  retraces = {name: (tr.trace_count - 1) + (tr.train_steps.experimental_get_tracing_count() - 1)
              for name, tr in trainers.items()}
  result = {
      'device': device,
      'tensorflow': tf.__version__,
      'peak_gflops_per_s': peak,
      'flags': {name: FLAGS[name].value for name in (
          'components', 'inference_components', 'savae_steps', 'hidden_units', 'latent_dim',
          'batch_size', 'num_importance_samples', 'eval_chunk', 'steps_per_repeat',
          'calls_per_repeat', 'repeats', 'bound_rows', 'strategy_rows',
          'pipeline_steps', 'train_examples', 'peak_sizes', 'grid_preset', 'grid_methods')},
      'timings': timings,
      'input_pipeline': pipeline,
      'ratios': ratios,
      'targets': targets,
      'retraces': retraces,
      # seconds per optimisation step of each preset method at each active count
      'grid_step_seconds': {
          'preset': FLAGS.grid_preset,
          'seconds_per_step': {v: {str(a): per(name) * grid_batch[v] for a, name in names.items()}
                               for v, names in grid_costs.items()},
      } if grid_costs else None,
      'wall_seconds': time.perf_counter() - wall_start,
  }
  shutil.rmtree(workdir, ignore_errors=True)
  _print_report(result, ref_m, k_is)
  if FLAGS.output:
    config_lib.write_json_atomic(FLAGS.output, result, sort_keys=True)
    common.log(f'wrote {FLAGS.output}')


def _profile(tf, cases, logdir):
  """Traces one run of each case with the TF profiler; prints the busiest events."""
  import collections  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  for case in cases:
    case_dir = os.path.join(logdir, case.name)
    tf.profiler.experimental.start(case_dir)
    case.run()
    tf.profiler.experimental.stop()
    totals = collections.Counter()
    try:
      from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
      for path in glob.glob(os.path.join(case_dir, 'plugins', 'profile', '*', '*.xplane.pb')):
        space = xplane_pb2.XSpace()
        with open(path, 'rb') as f:
          space.ParseFromString(f.read())
        for plane in space.planes:
          names = {k: v.name for k, v in plane.event_metadata.items()}
          for line in plane.lines:
            for event in line.events:
              totals[names.get(event.metadata_id, '?')] += event.duration_ps / 1e9
    except ImportError:
      pass
    common.log(f'profile of {case.name} written to {case_dir}; busiest events (ms, nested events '
               'overlap):')
    wrappers = ('Execute', 'ExecutorState', 'KernelAndDevice', 'BlockUntilReady', 'FunctionRun',
                '__inference', 'ThunkExecutor', 'SlinkyThreadPool', 'ParallelFor')
    busiest = [(n, ms) for n, ms in totals.most_common() if not any(w in n for w in wrappers)]
    for name, ms in busiest[:25]:
      common.log(f'  {ms:9.2f}  {name[:100]}')


def _print_report(result, ref_m, k_is):
  """The tables: one row per measurement, then the ratios with their targets."""
  peak = result['peak_gflops_per_s']
  common.log(f'\n{result["device"]}; TensorFlow {result["tensorflow"]}; '
             f'matmul peak {peak:.0f} GFLOP/s (float32, measured in this run)')
  common.log('\n| measurement | median | per unit | GFLOP/s | of peak |\n|---|---|---|---|---|')
  for name, t in result['timings'].items():
    per_unit = t['seconds_per_unit']
    per_text = (f'{per_unit * 1e6:.1f} us/{t["unit"]}' if per_unit < 1e-3
                else f'{per_unit * 1e3:.2f} ms/{t["unit"]}')
    if name.startswith('eval_'):
      per_text += f' ({1 / per_unit:.1f} {t["unit"]}s/s)'
    gflops = f'{t["gflops_per_s"]:.0f}' if 'gflops_per_s' in t else '-'
    frac = f'{100 * t["fraction_of_peak"]:.0f}%' if 'fraction_of_peak' in t else '-'
    common.log(f'| {name} | {t["median_s"] * 1e3:.2f} ms | {per_text} | {gflops} | {frac} |')
  common.log('\n| input pipeline | wait per step | step | wait share |\n|---|---|---|---|')
  for label, p in result['input_pipeline'].items():
    common.log(f'| {label} | {p["wait_ms_per_step"]:.3f} ms | {p["step_ms"]:.2f} ms | '
               f'{100 * p["wait_fraction"]:.1f}% |')
  common.log('\n| ratio | value | target |\n|---|---|---|')
  for name, value in result['ratios'].items():
    target = result['targets'].get(name)
    text = f'{target["target"]} ({"met" if target["met"] else "missed"})' if target else ''
    common.log(f'| {name} | {value:.3f} | {text} |')
  common.log(f'\nretraces after warm-up: {sum(result["retraces"].values())}; '
             f'wall time {result["wall_seconds"]:.0f} s')


if __name__ == '__main__':
  app.run(common.run(main))
