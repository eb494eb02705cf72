"""The reproduction grid: planning, capacity matching, resumable cells, tables and plots."""
import json
import os

import numpy as np
import pytest

from rec_vae_tf import config as config_lib
from rec_vae_tf.data import sources as data_sources
from rec_vae_tf import errors
from rec_vae_tf.experiments import grid
from rec_vae_tf.models import networks

P = 16


def _load_data(data_dir, train_examples=None):
  del data_dir, train_examples
  images = (np.random.default_rng(0).random([28, P]) * 255).astype(np.uint8)
  return data_sources.Splits(train=images[:12], valid=images[12:20], test=images[20:])


def _tiny_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels,
                   encoder_hidden_units=None):
  del hidden_units
  return networks.build_networks(num_components, (6,), latent_dim, eps_mode, seed, num_pixels,
                                 encoder_hidden_units=(encoder_hidden_units or (6,))[:1])


TINY = grid.Preset(description='test', variants=('rme', 'vae'), num_components=2,
                   component_grid=(1, 2), seeds=(0, 1), epochs=1, epochs_per_component=0.5,
                   num_importance_samples=4, test_examples=0, valid_examples=0)


def _base():
  return config_lib.Config(latent_dim=2, batch_size=4, eval_batch_size=4, xla=False)


@pytest.mark.parametrize('eps_mode', config_lib.EPS_MODES)
@pytest.mark.parametrize('hidden', [(7,), (5, 9)])
def test_encoder_parameter_formula_matches_the_network(eps_mode, hidden):
  encoder, _ = networks.build_networks(3, hidden, 4, eps_mode, 0, num_pixels=P)
  assert grid.encoder_parameters(P, hidden, 4, 3, eps_mode) == networks.count_parameters(encoder)


def test_capacity_matched_width_matches_m_encoders():
  cfg = config_lib.Config(num_components=4)  # the small network: 2 x 200, D = 50
  width = grid.matched_encoder_width(cfg)
  target = grid.encoder_parameters(784, (200, 200), 50, 4, 'amortized')
  got = grid.encoder_parameters(784, (width, width), 50, 1, 'amortized')
  worse = [grid.encoder_parameters(784, (w, w), 50, 1, 'amortized') for w in (width - 1, width + 1)]
  assert all(abs(got - target) <= abs(w - target) for w in worse)
  assert abs(got - target) / target < 0.005
  matched = grid.variant_config(config_lib.Config(), 'vae_matched', 4, 0)
  assert matched.method == 'vae' and matched.num_components == 1
  assert matched.encoder_hidden_units == width


def test_plan_covers_every_variant_component_and_seed():
  preset = grid.PRESETS['quick']
  cells = grid.plan(_base(), preset)
  names = {(c.variant, c.config.num_components) for c in cells}
  assert {v for v, _ in names} == set(grid.VARIANTS)
  assert {m for v, m in names if v == 'rme'} == {2, 4, 8}
  assert len(cells) == len(preset.seeds) * (len(grid.VARIANTS) + 2)
  assert len({c.cell_id for c in cells}) == len(cells)
  by = {(c.variant, c.config.seed): c.config for c in cells if c.config.num_components in (1, 4)}
  assert by[('iwae', 0)].num_train_samples == 4  # the mixtures' sample budget
  assert by[('mixture', 1)].schedule == 'simultaneous'
  assert by[('savae', 0)].refine_steps == 20
  assert all(c.split == 'test' and c.config.epochs == preset.epochs for c in cells)
  with pytest.raises(errors.ConfigError, match='methods contains'):
    grid.plan(_base(), preset, variants=['nope'])


def test_dataset_and_network_axes_keep_default_cell_ids_stable():
  preset = grid.PRESETS['quick']
  default = grid.plan(_base(), preset, seeds=[0], variants=['rme', 'vae'])
  assert [c.cell_id for c in default][:2] == ['test__rme__M2__s0', 'test__rme__M4__s0']
  assert grid.run_name(default[0].config).startswith('rme-M2-s0-')
  base = _base().replace(data_dir='data/{dataset}')
  cells = grid.plan(base, preset, seeds=[0], variants=['rme', 'vae', 'vae_matched'],
                    datasets=['mnist', 'svhn'], networks=['small', 'conv_small'])
  by_id = {c.cell_id: c.config for c in cells}
  assert 'test__rme__M4__s0' in by_id and 'test__vae_matched__M1__s0' in by_id
  assert by_id['test__rme__M4__s0'].data_dir == 'data/mnist'
  svhn = by_id['test__vae__M1__s0__svhn__conv_small']
  assert (svhn.binarization, svhn.data_dir) == ('none', 'data/svhn')
  assert grid.run_name(svhn).startswith('vae-svhn-conv_small-M1-s0-')
  assert 'test__rme__M4__s0__conv_small' in by_id
  assert not any(c.config.dataset == 'svhn' and c.config.network == 'small' for c in cells)
  # vae_matched is dense-only: asked for by name it is an error with a conv network;
  # svhn with only a dense network is refused by the config.
  with pytest.raises(errors.ConfigError, match='vae_matched'):
    grid.plan(base, preset, variants=['vae_matched'], networks=['conv_small'])
  assert all(c.variant != 'vae_matched' for c in grid.plan(base, preset, networks=['conv_small']))
  with pytest.raises(errors.ConfigError, match="network='small'; allowed: conv_small"):
    grid.plan(base, preset, datasets=['svhn'])
  with pytest.raises(errors.ConfigError, match='data_dir=.*{dataset}'):
    grid.plan(_base(), preset, datasets=['mnist', 'omniglot'])
  with pytest.raises(errors.ConfigError, match='datasets contains'):
    grid.plan(base, preset, datasets=['cifar'])


def test_ablation_plan_is_on_the_validation_split():
  cells = grid.plan(_base(), grid.PRESETS['quick'], ablation=True, seeds=[0])
  assert all(c.split == 'valid' for c in cells)
  labels = {c.ablation: c.config for c in cells}
  assert labels['kl_weight=0.0'].kl_weight == 0.0
  assert labels['component_objective=entropy'].method == 'boosted'
  assert labels['num_components=8'].num_components == 8
  assert labels['default'] == grid.variant_config(
      _base().replace(epochs=5, epochs_per_component=0.5), 'rme', 4, 0)


def test_ablation_of_another_base_keeps_its_bound_and_its_own_cell_ids():
  preset = grid.PRESETS['compare40']
  cells = grid.plan(_base(), preset, ablation=True, ablation_base='rme_iw_enc',
                    ablation_axes=['kl_weight', 'component_objective'], seeds=[0])
  assert [c.ablation for c in cells] == ['default', 'kl_weight=0.0', 'kl_weight=0.3',
                                         'kl_weight=0.5', 'component_objective=entropy']
  assert all(c.config.mixture_bound == 'iw' and c.config.bound_to_encoders for c in cells)
  assert cells[-1].config.method == 'boosted'
  assert cells[0].cell_id == 'valid__rme_iw_enc.default__M4__s0'
  rme_default = grid.plan(_base(), preset, ablation=True, seeds=[0])[0]
  assert rme_default.cell_id == 'valid__default__M4__s0'  # unchanged: old workdirs resume
  with pytest.raises(errors.ConfigError, match="ablation_axes contains 'lambda'"):
    grid.plan(_base(), preset, ablation=True, ablation_axes=['lambda'])
  with pytest.raises(errors.ConfigError, match="ablation_base='iwae'"):
    grid.plan(_base(), preset, ablation=True, ablation_base='iwae')


def test_grid_runs_resumes_and_reports(tmp_path):
  cells = grid.plan(_base(), TINY)
  lines = []
  kw = dict(num_importance_samples=4, test_examples=0, valid_examples=0, load_data=_load_data,
            make_networks=_tiny_networks, log=lines.append)
  rows = grid.run_grid(cells, str(tmp_path), **kw)
  assert len(rows) == len(cells) == 2 * 3  # seeds x (rme M=1, rme M=2, vae)
  assert all(np.isfinite(r['log_likelihood']) and r['log_likelihood'] >= r['elbo'] - 5 for r in rows)
  # rme with M = 1 and vae train the same model family but are separate cells and runs.
  assert len({r['run_dir'] for r in rows}) == len(rows)
  # A second run reads every cell back and trains nothing.
  lines.clear()
  again = grid.run_grid(cells, str(tmp_path), **kw)
  assert again == [json.loads(json.dumps(r)) for r in rows]
  assert lines == [f'{len(cells)} cells, {len(cells)} already finished']
  reports = grid.write_reports(rows, str(tmp_path))
  table = reports['table.md']
  mean = np.mean([r['log_likelihood'] for r in rows if r['variant'] == 'vae'])
  std = np.std([r['log_likelihood'] for r in rows if r['variant'] == 'vae'], ddof=1)
  assert f'| vae | 1 | 2 | {mean:.2f} ± {std:.2f} |' in table
  for name in ('cells.json', 'cells.csv', 'table.md', 'll_vs_components.png',
               'll_vs_inference_time.png'):
    assert os.path.getsize(tmp_path / name) > 0
  with open(tmp_path / 'cells.csv') as f:
    assert len(f.read().strip().splitlines()) == len(rows) + 1


def test_a_colour_conv_grid_reports_bits_per_dim_and_draws_colour_pictures(tmp_path):
  """svhn-shaped random images (injected) with the conv networks the config selects."""
  def load_colour(data_dir, train_examples=None):
    del data_dir, train_examples
    images = np.random.default_rng(1).integers(0, 256, [16, 32 * 32 * 3]).astype(np.uint8)
    return data_sources.Splits(train=images[:8], valid=images[8:12], test=images[12:])

  preset = grid.Preset(description='test', variants=('rme',), num_components=2,
                       component_grid=(2,), seeds=(0,), epochs=1, epochs_per_component=0.5,
                       num_importance_samples=3, test_examples=0, valid_examples=0)
  cells = grid.plan(_base(), preset, datasets=['svhn'], networks=['conv_small'])
  assert [c.cell_id for c in cells] == ['test__rme__M2__s0__svhn__conv_small']
  rows = grid.run_grid(cells, str(tmp_path), num_importance_samples=3, test_examples=0,
                       valid_examples=0, load_data=load_colour, log=lambda s: None)
  [row] = rows
  assert (row['dataset'], row['network']) == ('svhn', 'conv_small')
  assert row['bits_per_dim'] == pytest.approx(-row['log_likelihood'] / (3072 * np.log(2)))
  table = grid.write_reports(rows, str(tmp_path))['table.md']
  assert table.startswith('| dataset | network | method | M | seeds | test log p(x) | bits/dim |')
  assert f'| svhn | conv_small | rme | 2 | 1 | {row["log_likelihood"]:.2f} | ' in table
  grid.save_pictures(rows, str(tmp_path), num_components=2, load_data=load_colour)
  for name in ('ll_vs_inference_time_svhn_conv_small.png', 'samples_svhn_conv_small.png',
               'reconstructions_svhn_conv_small.png'):
    assert os.path.getsize(tmp_path / name) > 0
  # One M only: no log-likelihood-against-M plot (it would be empty).
  assert not os.path.exists(tmp_path / 'll_vs_components_svhn_conv_small.png')


def test_ablation_table_reports_the_difference_to_the_default():
  rows = [{'split': 'valid', 'variant': 'rme', 'ablation': a, 'log_likelihood': ll, 'elbo': ll - 5,
           'seconds_per_epoch': 1.0, 'inference_ms_per_batch': 1.0, 'num_parameters': 1,
           'num_importance_samples': 10, 'num_examples': 20}
          for a, ll in (('default', -100.0), ('default', -102.0), ('kl_weight=0.0', -100.5))]
  table = grid.ablation_table(rows)
  assert '| default | 2 | -101.00 ± 1.41 | +0.00 |' in table
  assert '| kl_weight=0.0 | 1 | -100.50 | +0.50 |' in table
  assert 'Ablations of rme. Best by validation log p(x): kl_weight=0.0 (+0.50 nats' in table


def test_long_preset_runs_savae_once_and_last_and_records_validation_log_likelihood():
  preset = grid.PRESETS['long']
  cells = grid.plan(_base(), preset)
  variants = [c.variant for c in cells]
  assert variants.count('savae') == 1 and variants[-1] == 'savae'
  assert cells[-1].config.seed == 0
  assert sorted(set(variants)) == sorted(preset.variants)
  assert all(variants.count(v) == 2 for v in preset.variants if v != 'savae')
  assert all(c.config.epochs == 200 and c.config.epochs_per_component == 20.0 for c in cells)
  assert all(c.config.valid_log_likelihood_every == 10 for c in cells)
  # The importance-weighted variants are selected on validation log p(x), the rest on
  # the ELBO (so those cells keep their training keys).
  assert {c.variant for c in cells if c.config.selection == 'log_likelihood'} == set(
      grid.IW_VARIANTS)
  assert 'selection' not in next(c for c in cells if c.variant == 'rme').config.to_dict()
  ablation = grid.plan(_base(), preset, ablation=True, ablation_base='rme_iw_enc',
                       ablation_axes=['kl_weight'], seeds=[0])
  assert len(ablation) == 4 and all(c.config.selection == 'log_likelihood' for c in ablation)
  # The measurement field changes the training key; the quick preset's keys do not change.
  quick = grid.plan(_base(), grid.PRESETS['quick'], seeds=[0], variants=['rme'])[0]
  assert 'valid_log_likelihood_every' not in quick.config.to_dict()


def test_importance_weighted_variants_stratified_rows_and_time_to_quality_plots(tmp_path):
  preset = grid.Preset(description='test', variants=('rme_iw', 'mixture_iw', 'iwae_dreg'),
                       num_components=2, component_grid=(), seeds=(0, 1), epochs=2,
                       epochs_per_component=1.0, num_importance_samples=4, test_examples=0,
                       valid_examples=0, valid_log_likelihood_every=1, stratified=True)
  cells = grid.plan(_base(), preset)
  by_variant = {c.variant: c.config for c in cells}
  assert by_variant['rme_iw'].method == 'rme' and by_variant['rme_iw'].mixture_bound == 'iw'
  assert by_variant['mixture_iw'].method == 'mixture'
  assert by_variant['mixture_iw'].mixture_bound == 'iw'
  assert by_variant['iwae_dreg'].dreg and by_variant['iwae_dreg'].num_train_samples == 2
  enc = grid.variant_config(_base(), 'rme_iw_enc', 2, 0)
  assert enc.method == 'rme' and enc.mixture_bound == 'iw' and enc.bound_to_encoders
  kw = dict(num_importance_samples=4, test_examples=0, valid_examples=0, load_data=_load_data,
            make_networks=_tiny_networks, log=lambda s: None)
  rows = grid.run_grid(cells, str(tmp_path), stratified=True, **kw)
  for r in rows:
    assert np.isfinite(r['log_likelihood_stratified']) and r['log_likelihood_stratified_se'] > 0
    assert r['log_likelihood_se'] > 0 and r['split'] == 'test'
    # One active component: the stratified estimator is the plain one (not drawn twice);
    # a mixture's two estimates come from different draws.
    same = r['log_likelihood_stratified'] == r['log_likelihood']
    assert same == (r['active_components'] == 1), (r['variant'], r['active_components'])
  # Cells written without the stratified estimate are evaluated again (training reused).
  plain = grid.run_grid(cells[:1], str(tmp_path / 'plain'), **kw)
  assert plain[0]['log_likelihood_stratified'] is None
  again = grid.run_grid(cells[:1], str(tmp_path / 'plain'), stratified=True, **kw)
  assert again[0]['log_likelihood_stratified'] is not None
  assert again[0]['log_likelihood'] == plain[0]['log_likelihood']
  reports = grid.write_reports(rows, str(tmp_path))
  assert (tmp_path / 'curves.md').read_text() == reports['curves.md']
  for name in ('rme_iw M=2', 'mixture_iw (SIWAE) M=2', 'iwae (DReG)'):
    assert f'| {name} | 2 | ' in reports['curves.md'], name
  for name in ('valid_ll_vs_epochs.png', 'valid_ll_vs_seconds.png'):
    assert os.path.getsize(tmp_path / name) > 0
  with open(tmp_path / rows[0]['run_dir'] / 'history.json') as f:
    history = json.load(f)
  assert [np.isfinite(h['valid_log_likelihood']) for h in history] == [True, True]
  # A results folder (cells.json and the kept histories, no runs/ or cells/) rebuilds the
  # same reports; a cell missing from it, or saved for another config, is reported missing.
  results = tmp_path / 'results'
  os.makedirs(results / grid.HISTORIES_DIR)
  (results / 'cells.json').write_text((tmp_path / 'cells.json').read_text())
  for r in rows:
    name = r['cell'] + '.json'
    kept = (tmp_path / grid.HISTORIES_DIR / name).read_text()
    assert json.loads(kept) == json.loads((tmp_path / r['run_dir'] / 'history.json').read_text())
    (results / grid.HISTORIES_DIR / name).write_text(kept)
  found, missing = grid.finished_rows(cells, str(results), stratified=True)
  assert found == rows and missing == []
  rebuilt = grid.write_reports(found, str(results))
  assert rebuilt == reports
  saved = json.loads((results / 'cells.json').read_text())
  saved[1]['config']['seed'] = 7
  saved[2]['config']['data_dir'] = '/where/the/data/lay/then'  # not part of the match
  (results / 'cells.json').write_text(json.dumps(saved[2:] + saved[1:2]))
  found, missing = grid.finished_rows(cells, str(results), stratified=True)
  assert [r['cell'] for r in found] == [r['cell'] for r in rows[2:]] and missing == cells[:2]


def test_validation_selection_uses_only_the_final_validation_log_likelihood(tmp_path):
  rows = []
  # rme_iw wins on validation; its test number (worse here) takes no part.
  for variant, seed, finals, test in (('rme', 0, [-99.0, -95.0], -90.0), ('rme', 1, [-96.0], -90.0),
                                      ('rme_iw', 0, [-98.0, -94.0], -95.0),
                                      ('rme_iw', 1, [-94.5], -95.0),
                                      ('iwae', 0, [-97.0], -80.0), ('vae', 0, [-90.0], -80.0)):
    run_dir = f'runs/{variant}-{seed}'
    os.makedirs(tmp_path / run_dir)
    history = [{'step': i, 'valid_log_likelihood': v} for i, v in enumerate(finals)]
    history.insert(0, {'step': -1})  # epochs without the measurement are skipped
    (tmp_path / run_dir / 'history.json').write_text(json.dumps(history))
    rows.append({'split': 'test', 'variant': variant, 'run_dir': run_dir, 'log_likelihood': test,
                 'seed': seed})
  text, chosen = grid.validation_selection(rows, str(tmp_path))
  assert chosen == {'RME (bound, gradients to the encoders)': 'rme_iw'}  # iwae alone: no choice
  assert 'chosen `rme_iw` on validation (seeds 0, 1: those every variant has)' in text
  assert '| rme_iw | 2 | -94.25 | 0.25 | +0.00 |' in text
  assert '| rme | 2 | -95.50 | 0.50 | -1.25 |' in text
  assert 'IWAE' not in text
  # A variant with seed 0 only: the family is compared on seed 0 alone, where rme_iw_enc's
  # -94.1 loses to rme_iw's -94.0 (against rme_iw's two-seed mean, -94.25, it would win).
  os.makedirs(tmp_path / 'runs/enc-0')
  (tmp_path / 'runs/enc-0/history.json').write_text(json.dumps([{'valid_log_likelihood': -94.1}]))
  enc = {'split': 'test', 'variant': 'rme_iw_enc', 'run_dir': 'runs/enc-0', 'seed': 0}
  text, chosen = grid.validation_selection(rows + [enc], str(tmp_path))
  assert chosen == {'RME (bound, gradients to the encoders)': 'rme_iw'}
  assert '(seed 0: those every variant has; left out: 1)' in text
  assert '| rme_iw | 1 | -94.00 | 0.00 | +0.00 |' in text
  assert '| rme_iw (bound to encoders) | 1 | -94.10 | 0.00 | -0.10 |' in text


def test_curve_table_gaps_to_rme_along_training_and_epochs_to_a_common_level(tmp_path):
  def run(values, seconds_per_epoch=10.0, step=10):
    return [{'epoch': step * (i + 1), 'valid_log_likelihood': v,
             'train_seconds': seconds_per_epoch * step * (i + 1)} for i, v in enumerate(values)]
  curves = {
      'vae': [run([-100.0, -96.0, -95.0]), run([-102.0, -96.0, -93.0])],  # means -101, -96, -94
      'rme M=4': [run([-99.0, -93.5, -92.5], seconds_per_epoch=20.0)],
      # Measured every 5 epochs: only the epochs every run shares are columns.
      'iwae': [run([-99.5, -97.0, -96.0, -95.0, -94.0, -93.5], step=5)],
  }
  text = grid.curve_table(curves)
  assert '| method | seeds | epoch 10 | epoch 20 | epoch 30 |' in text
  assert '| vae | 2 | -101.00 (-2.00) | -96.00 (-2.50) | -94.00 (-1.50) |' in text
  assert '| rme M=4 | 1 | -99.00 | -93.50 | -92.50 |' in text
  assert '| iwae | 1 | -97.00 (+2.00) | -95.00 (-1.50) | -93.50 (-1.00) |' in text
  # The common level is the lowest final mean (-94.0, vae): reached at epoch 30 by vae,
  # epoch 20 by rme (400 s at 20 s/epoch) and epoch 25 by iwae (5-epoch measurements);
  # RME's final level (-92.5) only by RME, at epoch 30.
  assert '| method | epoch to -94.0 | seconds to -94.0 | epoch to -92.5 | seconds to -92.5 |' in text
  assert '| vae | 30 | 300 | not reached |  |' in text
  assert '| rme M=4 | 20 | 400 | 30 | 600 |' in text
  assert '| iwae | 25 | 250 | not reached |  |' in text
  assert 'reached -94.0 nats (the lowest final mean) and -92.5 nats' in text
  assert 'as the runs measured them' in text
  # Many measured epochs: the first, the last and every 40th are the columns.
  many = grid.curve_table({'rme M=2': [run([-100.0 + i for i in range(20)])]})
  assert '| method | seeds | epoch 10 | epoch 40 | epoch 80 | epoch 120 | epoch 160 | epoch 200 |' \
      in many
  assert 'in brackets' not in grid.curve_table({'vae': [run([-90.0])]})
  assert grid.curve_table({}) == ''


def _write_history(tmp_path, variant, history):
  run_dir = f'runs/{variant}'
  os.makedirs(tmp_path / run_dir)
  (tmp_path / run_dir / 'history.json').write_text(json.dumps(history))
  return {'split': 'test', 'variant': variant, 'cell': variant, 'run_dir': run_dir,
          'num_components': 2}


def test_seconds_along_the_curves_are_derived_from_the_benchmarks_step_costs(tmp_path):
  # Two epochs of 10 steps each; RME grows from one to two components after the first.
  rme = [{'epoch': 1, 'step': 10, 'num_active': 1, 'train_seconds': 50.0},
         {'epoch': 2, 'step': 20, 'num_active': 2, 'train_seconds': 90.0,
          'valid_log_likelihood': -95.0}]
  vae = [{'epoch': 1, 'step': 10, 'num_active': 1, 'train_seconds': 7.0},
         {'epoch': 2, 'step': 20, 'num_active': 1, 'train_seconds': 9.0,
          'valid_log_likelihood': -96.0}]
  rows = [_write_history(tmp_path, 'rme', rme), _write_history(tmp_path, 'vae', vae)]
  costs = {'rme': {'1': 0.5, '2': 2.0}, 'vae': {'1': 0.25}}
  curves = grid._validation_curves(rows, str(tmp_path), costs)
  # rme: 10 steps x 0.5 s + 10 x 2.0 s; vae: 20 x 0.25 s.
  assert curves['rme M=2'][0][-1]['step_cost_seconds'] == 25.0
  assert curves['vae'][0][-1]['step_cost_seconds'] == 5.0
  text = grid.curve_table(curves)
  assert '| rme M=2 | 2 | 25 |' in text and '| vae | 2 | 5 |' in text
  assert 'derived from the benchmark' in text
  # A method without costs (or an active count not measured): the runs' own seconds for all.
  for partial in ({'rme': costs['rme']}, {'rme': {'1': 0.5}, 'vae': costs['vae']}):
    text = grid.curve_table(grid._validation_curves(rows, str(tmp_path), partial))
    assert '| rme M=2 | 2 | 90 |' in text and '| vae | 2 | 9 |' in text
    assert 'as the runs measured them' in text
  # The plot against seconds draws the derived seconds too.
  grid._save_time_to_quality(rows, str(tmp_path), costs)
  assert os.path.getsize(tmp_path / 'valid_ll_vs_seconds.png') > 0
  # The method table: per epoch, rme (5 + 20) / 2 and vae 5 / 2, beside the runs' own s/epoch.
  epoch_seconds = grid.benchmark_epoch_seconds(rows, str(tmp_path), costs)
  assert epoch_seconds == {'rme': 12.5, 'vae': 2.5}
  full = [dict(r, seed=0, log_likelihood=-90.0, elbo=-95.0,
               seconds_per_epoch=45.0, inference_ms_per_batch=1.0, num_parameters=10,
               num_importance_samples=5, num_examples=3) for r in rows]
  table = grid.method_table(full, epoch_seconds)
  assert '| s/epoch | s/epoch (benchmark) |' in table
  assert '| rme | 2 | 1 | -90.00 | -95.00 | 10 | 45.0 | 12.5 | 1.00 |' in table
  assert '| vae | 2 | 1 | -90.00 | -95.00 | 10 | 45.0 | 2.5 | 1.00 |' in table
  # Runs whose histories are gone: the same seconds from their configs' schedules (1,000
  # training images in batches of 100: 10 steps per epoch, rme's second component from step 10).
  configs = {'rme': config_lib.Config(method='rme', num_components=2, epochs=2,
                                      epochs_per_component=1.0, train_examples=1000),
             'vae': config_lib.Config(method='vae', num_components=1, epochs=2, train_examples=1000)}
  gone = [dict(r, cell=r['cell'] + '_gone', run_dir='runs/gone',
               config=configs[r['variant']].to_dict()) for r in rows]
  assert grid.benchmark_epoch_seconds(gone, str(tmp_path), costs) == {
      'rme_gone': 12.5, 'vae_gone': 2.5}
  assert grid.benchmark_epoch_seconds(gone, str(tmp_path), {'rme': {'1': 0.5}}) == {}
  # Not every cell measured: no such column.
  assert 'benchmark' not in grid.method_table(full, {'rme': 12.5})
  assert 'benchmark' not in grid.method_table(full)


def test_step_costs_file_is_read_or_refused_in_one_line(tmp_path):
  good = tmp_path / 'benchmark.json'
  good.write_text(json.dumps({'grid_step_seconds': {'preset': 'long', 'seconds_per_step': {
      'vae': {'1': 0.01}}}}))
  assert grid.load_step_seconds(str(good)) == {'vae': {'1': 0.01}}
  (tmp_path / 'plain.json').write_text(json.dumps({'timings': {}}))
  (tmp_path / 'broken.json').write_text('{')
  for name, words in (('missing.json', 'cannot read'), ('broken.json', 'cannot read'),
                      ('plain.json', 'no grid_step_seconds')):
    with pytest.raises(errors.ConfigError, match=words) as raised:
      grid.load_step_seconds(str(tmp_path / name))
    assert '\n' not in str(raised.value)


def test_gap_plot_is_drawn_against_rme_only_when_rme_ran(tmp_path):
  rows = []
  for variant, values in (('rme', [-99.0, -95.0]), ('vae', [-100.0, -96.5])):
    run_dir = f'runs/{variant}'
    os.makedirs(tmp_path / run_dir)
    history = [{'epoch': e, 'valid_log_likelihood': v, 'train_seconds': 10.0 * e}
               for e, v in ((10, values[0]), (20, values[1]))]
    (tmp_path / run_dir / 'history.json').write_text(json.dumps(history))
    rows.append({'split': 'test', 'variant': variant, 'run_dir': run_dir, 'num_components': 4})
  curves = grid._save_time_to_quality(rows, str(tmp_path))
  assert sorted(curves) == ['rme M=4', 'vae']
  assert os.path.getsize(tmp_path / 'valid_ll_gap_vs_epochs.png') > 0
  os.remove(tmp_path / 'valid_ll_gap_vs_epochs.png')
  grid._save_time_to_quality(rows[1:], str(tmp_path))  # no RME: no gap plot
  assert not os.path.exists(tmp_path / 'valid_ll_gap_vs_epochs.png')
  assert os.path.getsize(tmp_path / 'valid_ll_vs_epochs.png') > 0
