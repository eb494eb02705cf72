"""Dry run of launch/benchmark.py's real main, as a subprocess with tiny flags.

Checks that every measurement and ratio is in the JSON and is a finite,
positive number, that targets are reported, that nothing retraced, and that
bad flags fail with one line before TensorFlow loads. Tiny sizes: it times
nothing meaningful, it only exercises every code path (about 20 s).
"""
import json
import math
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Under Bazel the launchers live in the runfiles root, the test's cwd.
CWD = os.getcwd() if os.path.isfile(os.path.join('launch', 'benchmark.py')) else _ROOT
TINY = ['--batch_size=8', '--repeats=2', '--num_importance_samples=16', '--eval_chunk=8',
        '--components=2', '--inference_components=2', '--mixed_precision_rows=false', '--savae_steps=2,3',
        '--hidden_units=16', '--latent_dim=4', '--steps_per_repeat=2', '--calls_per_repeat=2',
        '--pipeline_steps=6', '--train_examples=40', '--peak_sizes=64',
        # Two of the long preset's methods as its cells train them (their own networks).
        '--grid_preset=long', '--grid_methods=vae,rme']


def _run(flags, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', MPLCONFIGDIR=str(tmp_path / 'mpl'))
  return subprocess.run([sys.executable, '-m', 'launch.benchmark', *flags], cwd=CWD, env=env,
                        capture_output=True, text=True, timeout=300)


def _positive_finite(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_dry_run_writes_every_ratio(tmp_path):
  output = tmp_path / 'benchmark.json'
  result = _run(TINY + [f'--output={output}'], tmp_path)
  assert result.returncode == 0, f'{result.stdout}\n{result.stderr[-4000:]}'
  report = json.loads(output.read_text())

  # (--mixed_precision_rows is off here: it is the XLA rows' code with bfloat16 networks.)
  trains = [f'train_{label}_{mode}' for mode in ('xla', 'noxla') for label in ('vae', 'rme_m2')]
  trains += [f'train_{label}_xla' for label in ('rme_m2_iw', 'mixture_m2', 'mixture_m2_iw',
                                                 'iwae_k2', 'iwae_k2_dreg')]
  trains += ['train_vae_mirrored_xla', 'train_rme_m2_mirrored_xla']
  expected_timings = trains + [
      'inference_vae', 'inference_rme_m2', 'inference_savae2', 'inference_savae3',
      'eval_rme_m2_k16', 'peak_matmul_64_tf', 'peak_matmul_64_xla']
  # The preset's RME grows to M = 4 components: a row at each count (grid.curve_table).
  expected_timings += ['train_grid_vae_a1'] + [f'train_grid_rme_a{a}' for a in range(1, 5)]
  assert sorted(report['timings']) == sorted(expected_timings)
  for name, timing in report['timings'].items():
    assert _positive_finite(timing['seconds_per_unit']), name
    assert timing['rounds'] == 2
    if not name.startswith(('inference_savae', 'train_grid_')):
      assert _positive_finite(timing['gflops_per_s']) and _positive_finite(timing['fraction_of_peak'])

  expected_ratios = (
      [f'train_rme_m2_over_vae_{mode}' for mode in ('xla', 'noxla')] +
      [f'xla_speedup_train_{label}' for label in ('vae', 'rme_m2')] +
      ['inference_rme_m2_over_vae', 'inference_savae2_over_rme_m2', 'inference_savae3_over_rme_m2',
       'eval_flops_over_peak', 'input_wait_fraction_vae', 'input_wait_fraction_rme_m2',
       'input_wait_fraction', 'train_rme_m2_iw_over_rme_m2_xla',
       'train_mixture_m2_iw_over_mixture_m2_xla', 'train_iwae_k2_dreg_over_iwae_k2_xla',
       'train_vae_mirrored_over_default_xla', 'train_rme_m2_mirrored_over_default_xla'] +
      [f'train_{label}_flops_over_peak_{mode}' for label in ('vae', 'rme_m2')
       for mode in ('xla', 'noxla')] +
      [f'train_{label}_flops_over_peak_xla' for label in ('rme_m2_iw', 'mixture_m2',
                                                           'mixture_m2_iw', 'iwae_k2',
                                                           'iwae_k2_dreg')])
  expected_ratios += [f'train_grid_rme_a{a}_over_vae' for a in range(1, 5)]
  assert sorted(report['ratios']) == sorted(expected_ratios)
  for name, value in report['ratios'].items():
    assert _positive_finite(value), (name, value)
  # Targets are stated for M = 4; with M = 2 only the device-independent ones apply.
  assert set(report['targets']) == {'eval_flops_over_peak', 'input_wait_fraction'}
  for target in report['targets'].values():
    assert isinstance(target['met'], bool) and target['target'][:1] in '<>'
  assert _positive_finite(report['peak_gflops_per_s'])
  assert report['retraces'] and set(report['retraces'].values()) == {0}
  for label in ('vae', 'rme_m2'):
    assert 0 < report['input_pipeline'][label]['wait_fraction'] < 1
  # Seconds per step = seconds per example x the preset's batch (100), what reproduce reads.
  costs = report['grid_step_seconds']
  assert costs['preset'] == 'long' and sorted(costs['seconds_per_step']) == ['rme', 'vae']
  assert sorted(costs['seconds_per_step']['rme']) == ['1', '2', '3', '4']
  assert costs['seconds_per_step']['vae']['1'] == pytest.approx(
      100 * report['timings']['train_grid_vae_a1']['seconds_per_unit'])
  assert '| ratio | value | target |' in result.stdout
  assert 'eval_flops_over_peak' in result.stdout


def test_bad_flags_fail_with_one_line(tmp_path):
  for flag, needle in (('--components=2,x', 'comma-separated integers'),
                       ('--repeats=0', 'repeats=0'),
                       (f'--output={tmp_path}/missing/out.json', 'does not exist'),
                       ('--grid_preset=nope', 'grid_preset'),
                       ('--grid_methods=vae', 'needs it'),
                       ('--grid_preset=long --grid_methods=hf', "'hf'")):
    result = _run(flag.split(), tmp_path)
    assert result.returncode == 2, result.stdout
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith('error: ') and needle in lines[-1], result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
