"""The paper's comparison as a grid of cells: methods x components x seeds (launch/reproduce.py).

A *cell* is one trained model evaluated on one split: (variant, M, seed,
config overrides, split), on one dataset with one network size: datasets and
networks are grid axes too (default mnist and small; a cell's id and training
directory name them only when they differ from those, so ids of MNIST cells
are the same as before the axes existed). Every cell goes through the same data, decoder,
trainer, checkpointing and evaluation (`loop.train`, `rows.evaluate_run`).

  * Training directories are keyed by the full config (`runs/<name>-<hash>`),
    so two cells with the same config share one training (the ablation's
    default cell is the main grid's RME cell when the lengths agree), and an
    interrupted training resumes where it stopped.
  * A finished cell writes `cells/<cell id>.json` atomically; a rerun reuses
    it and trains nothing (resumable grid).
  * The main grid is evaluated on the test split (importance-sampled log p(x)
    with K samples, test ELBO), the ablation grid on the validation split:
    defaults are chosen by validation log-likelihood, never on the test set.

Outputs in the grid's workdir: cells.json and cells.csv (one row per cell),
table.md (mean +- std over seeds per variant and M), ablation.md, and the
plots ll_vs_components.png, ll_vs_inference_time.png, samples.png,
reconstructions.png.
"""

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rec_vae_tf import config as config_lib
from rec_vae_tf.data import catalog as data_catalog
from rec_vae_tf.data import pipeline as data_lib
from rec_vae_tf import errors
from rec_vae_tf.evaluation import rows as rows_lib
from rec_vae_tf.training import memory

# variant -> the method it trains (the capacity-matched VAE is a vae with a wider encoder).
VARIANTS = {
    'rme': 'rme',
    'vae': 'vae',
    'vae_matched': 'vae',
    'mixture': 'mixture',
    'boosted': 'boosted',
    'savae': 'savae',
    'vae_svi': 'vae_svi',
    'iaf': 'iaf',
    'hf': 'hf',
    'iwae': 'iwae',
    'rme_iw': 'rme',
    'rme_iw_enc': 'rme',
    'mixture_iw': 'mixture',
    'iwae_dreg': 'iwae',
}
# Config fields a variant sets on top of its method's defaults.
VARIANT_FIELDS = {
    'rme_iw': {'mixture_bound': 'iw'},       # the decoder and weights on the IW mixture bound
    # ... and the bound's gradient reaching the encoders too, on top of J_m.
    'rme_iw_enc': {'mixture_bound': 'iw', 'bound_to_encoders': True},
    'mixture_iw': {'mixture_bound': 'iw'},   # SIWAE (Morningstar et al. 2021)
    'iwae_dreg': {'dreg': True},             # IWAE with DReG encoder gradients
}
DISPLAY = {'vae_matched': 'vae (capacity-matched)', 'vae_svi': 'vae+svi',
           'mixture_iw': 'mixture_iw (SIWAE)', 'iwae_dreg': 'iwae (DReG)',
           'rme_iw_enc': 'rme_iw (bound to encoders)'}
# Variants whose decoder trains on an importance-weighted bound. Their ELBO can fall
# while the bound and log p(x) rise (compare40's SIWAE seed 2 kept epoch 13 of 40 by
# its ELBO), so presets may select them on validation log p(x) (Preset.log_likelihood_selection).
IW_VARIANTS = ('iwae', 'iwae_dreg', 'rme_iw', 'rme_iw_enc', 'mixture_iw')
# Variants with a mixture of M encoders: the ones the component axis applies to.
MIXTURE_VARIANTS = ('rme', 'mixture', 'boosted', 'rme_iw', 'rme_iw_enc', 'mixture_iw')
# About 10x the cost per epoch of the others (refinement steps): run after every other cell.
SLOW_VARIANTS = ('savae', 'vae_svi')

# The ablation grid (validation split): axis -> values tried besides the default.
ABLATIONS = {
    'kl_weight': (0.0, 0.3, 0.5),
    'prior_floor': (0.0, 0.2),
    'eps_mode': ('global', 'fixed'),
    'schedule': ('freeze_earlier', 'simultaneous'),
    'warm_start': (False,),
    'num_components': (1, 2, 8),
    'component_objective': ('entropy',),  # KL (rme) versus entropy (boosted)
}
# The variants the ablation grid can start from: RME with either mixture bound.
ABLATION_BASES = ('rme', 'rme_iw', 'rme_iw_enc')


@dataclasses.dataclass(frozen=True)
class Preset:
  """A grid's shape and training length."""
  description: str
  variants: Tuple[str, ...]
  num_components: int                 # M of the mixture variants in the method table
  component_grid: Tuple[int, ...]     # extra M values for RME (log-likelihood against M)
  seeds: Tuple[int, ...]
  epochs: int
  epochs_per_component: float
  num_importance_samples: int
  test_examples: int                  # 0: the whole test set
  valid_examples: int                 # validation images of the ablation grid
  train_examples: int = 0             # 0: all 50,000
  # Variants run with the first seed only (savae: about 10x the cost per epoch), after the rest.
  first_seed_only: Tuple[str, ...] = ()
  # Time-to-quality: validation log p(x) every N epochs in history.json (0: never).
  valid_log_likelihood_every: int = 0
  # Also the stratified test estimate (K / M per component) of every cell.
  stratified: bool = False
  # Variants whose best/ is chosen by validation log p(x) (Config.selection) instead of
  # the validation ELBO; needs valid_log_likelihood_every.
  log_likelihood_selection: Tuple[str, ...] = ()


ALL_VARIANTS = tuple(VARIANTS)
PRESETS = {
    'quick': Preset(
        description='a smoke check of every method on this CPU (about 30 minutes on 2 cores)',
        variants=ALL_VARIANTS, num_components=4, component_grid=(2, 4, 8), seeds=(0, 1),
        epochs=5, epochs_per_component=0.5, num_importance_samples=500, test_examples=5000,
        valid_examples=2000),
    'paper': Preset(
        description='full length, K = 5000 on the whole test set; meant for a GPU',
        variants=ALL_VARIANTS, num_components=4, component_grid=(1, 2, 3, 4, 6, 8),
        seeds=(0, 1, 2), epochs=200, epochs_per_component=20.0,
        num_importance_samples=5000, test_examples=0, valid_examples=10000),
    'long': Preset(
        description='200 epochs on this CPU (several hours on 2 cores), K = 5000 on the whole '
                    'test set, validation log p(x) every 10 epochs',
        # rme_iw_enc: the RME variant compare40's validation split chose (selection.md).
        variants=('vae', 'vae_matched', 'iwae', 'rme', 'iaf', 'rme_iw', 'mixture_iw',
                  'iwae_dreg', 'rme_iw_enc', 'savae'), num_components=4,
        component_grid=(), seeds=(0, 1), epochs=200, epochs_per_component=20.0,
        num_importance_samples=5000, test_examples=0, valid_examples=10000,
        first_seed_only=('savae',), valid_log_likelihood_every=10, stratified=True,
        # Each method is selected on the validation value of what it maximises: the ELBO,
        # or, for an importance-weighted bound, log p(x) (the bound's limit).
        log_likelihood_selection=IW_VARIANTS),
    'compare40': Preset(
        description='the 40-epoch comparison of the importance-weighted methods (main job '
                    'schedule), 3 seeds, K = 1000 on the whole test set',
        variants=('rme', 'rme_iw', 'rme_iw_enc', 'mixture_iw', 'iwae', 'iwae_dreg',
                  'vae_matched', 'iaf', 'savae'), num_components=4, component_grid=(), seeds=(0, 1, 2), epochs=40,
        epochs_per_component=3.0, num_importance_samples=1000, test_examples=0,
        valid_examples=10000, valid_log_likelihood_every=2),
}


@dataclasses.dataclass(frozen=True)
class Cell:
  variant: str
  config: config_lib.Config
  split: str                 # 'test' (method table) or 'valid' (ablation)
  ablation: str = ''         # 'axis=value', 'default' or '' (not an ablation cell)

  @property
  def cell_id(self) -> str:
    tag = self.ablation or self.variant
    if self.ablation and self.variant != 'rme':  # ablations of another base variant
      tag = f'{self.variant}.{self.ablation}'
    return (f'{self.split}__{tag}__M{self.config.num_components}__s{self.config.seed}'
            + ''.join(f'__{v}' for v in _axes_tags(self.config)))


DEFAULT_DATASET = config_lib.Config.dataset
DEFAULT_NETWORK = config_lib.Config.network


def _axes_tags(cfg: config_lib.Config) -> List[str]:
  """The dataset and network of cfg where they are not the defaults (mnist, small)."""
  return [v for v, default in ((cfg.dataset, DEFAULT_DATASET), (cfg.network, DEFAULT_NETWORK))
          if v != default]


# ------------------------------------------------------------------ capacity
# Trainable parameters of a dense MixtureEncoder in closed form (also the memory estimate's).
encoder_parameters = memory.encoder_parameters


def matched_encoder_width(cfg: config_lib.Config, num_pixels: int = data_catalog.NUM_PIXELS) -> int:
  """Hidden width of one encoder with about as many parameters as cfg's M encoders."""
  target = encoder_parameters(num_pixels, cfg.hidden_units, cfg.latent_dim, cfg.num_components,
                              cfg.eps_mode)
  layers = len(cfg.hidden_units)
  count = lambda w: encoder_parameters(num_pixels, (w,) * layers, cfg.latent_dim, 1, cfg.eps_mode)
  low, high = 1, 1
  while count(high) < target:
    high *= 2
  while high - low > 1:  # smallest width with count >= target
    mid = (low + high) // 2
    low, high = (mid, high) if count(mid) < target else (low, mid)
  return min((low, high), key=lambda w: abs(count(w) - target))


# ---------------------------------------------------------------------- plan
def variant_config(base: config_lib.Config, variant: str, num_components: int,
                   seed: int) -> config_lib.Config:
  """The config of `variant` at M components (mixture variants) and `seed`."""
  from rec_vae_tf.experiments import experiment  # pylint: disable=g-import-not-at-top
  if variant not in VARIANTS:
    raise errors.ConfigError(f'invalid variant {variant!r}; allowed: {", ".join(VARIANTS)}')
  cfg = base.replace(num_components=num_components, seed=seed)
  if variant == 'vae_matched':
    width = matched_encoder_width(cfg.replace(method='rme'))
    return experiment.method_config(cfg, 'vae').replace(encoder_hidden_units=width).validate()
  return experiment.method_config(cfg, VARIANTS[variant]).replace(
      **VARIANT_FIELDS.get(variant, {})).validate()


DATASET_PLACEHOLDER = '{dataset}'


def dataset_config(base: config_lib.Config, dataset: str, network: str) -> config_lib.Config:
  """base on `dataset` with `network`, validated.

  base.data_dir may contain '{dataset}' (e.g. data/{dataset}), replaced by the
  dataset's name; the binarization stays base's where the dataset allows it,
  else it is the dataset's default (fixed for binarized_mnist, none for svhn).
  """
  if dataset not in config_lib.DATASETS:
    raise errors.ConfigError(f'invalid flag: datasets contains {dataset!r}; allowed: '
                             f'{", ".join(config_lib.DATASETS)}')
  if network not in config_lib.NETWORKS:
    raise errors.ConfigError(f'invalid flag: networks contains {network!r}; allowed: '
                             f'{", ".join(config_lib.NETWORKS)}')
  binarization = (base.binarization if base.binarization in
                  config_lib.DATASET_BINARIZATIONS[dataset]
                  else config_lib.default_binarization(dataset))
  return base.replace(dataset=dataset, network=network, binarization=binarization,
                      data_dir=base.data_dir.replace(DATASET_PLACEHOLDER, dataset)).validate()


def plan(base: config_lib.Config, preset: Preset, *, ablation: bool = False,
         ablation_base: str = 'rme', ablation_axes: Optional[Sequence[str]] = None,
         variants: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
         component_grid: Optional[Sequence[int]] = None,
         datasets: Optional[Sequence[str]] = None,
         networks: Optional[Sequence[str]] = None) -> List[Cell]:
  """Every cell of the grid, validated, in run order.

  ablation: the ablation grid on the validation split instead: ablation_base
  (one of ABLATION_BASES) as the default, and every value of ABLATIONS'
  axes (ablation_axes: a subset of them; None: all) changed one at a time.
  datasets, networks: grid axes (None: base's dataset and network); every
  dataset runs with every network, except that colour datasets (svhn,
  celeba) skip the dense ones. Several datasets need base.data_dir with
  '{dataset}' in it (their files differ but share names, e.g. mnist's and
  fashion_mnist's IDX files). vae_matched (a wider dense encoder) has no conv
  counterpart: it is left out for conv networks, and an error when asked for
  by name with conv networks only.
  """
  base = base.replace(epochs=preset.epochs, epochs_per_component=preset.epochs_per_component,
                      num_components=preset.num_components,
                      valid_log_likelihood_every=preset.valid_log_likelihood_every,
                      train_examples=preset.train_examples or base.train_examples)
  datasets = tuple(datasets or (base.dataset,))
  networks = tuple(networks or (base.network,))
  if len(set(datasets)) > 1 and DATASET_PLACEHOLDER not in base.data_dir:
    raise errors.ConfigError(
        f'invalid flag: data_dir={base.data_dir!r}; allowed: a path containing '
        f'{DATASET_PLACEHOLDER} (e.g. data/{DATASET_PLACEHOLDER}) when the grid has several '
        'datasets')
  if ablation and ablation_base not in ABLATION_BASES:
    raise errors.ConfigError(f'invalid flag: ablation_base={ablation_base!r}; allowed: '
                             f'{", ".join(ABLATION_BASES)}')
  unknown = sorted(set(ablation_axes or ()) - set(ABLATIONS))
  if ablation and unknown:
    raise errors.ConfigError(f'invalid flag: ablation_axes contains {unknown[0]!r}; allowed: '
                             f'{", ".join(ABLATIONS)}')
  if ablation and (len(datasets) > 1 or len(networks) > 1):
    raise errors.ConfigError('invalid flag: the ablation grid runs one dataset and one network '
                             f'at a time; got datasets={",".join(datasets)} '
                             f'networks={",".join(networks)}')
  # Colour datasets have no dense networks: those pairs are left out of the
  # cross product (a colour dataset with only dense networks fails validation).
  pairs = [(d, n) for d in datasets for n in networks
           if not (d in config_lib.COLOUR_DATASETS and n in config_lib.DENSE_NETWORKS)]
  for d in datasets:
    if all(d != pd for pd, _ in pairs):
      dataset_config(base, d, networks[0])  # raises: names what the dataset allows
  bases = [dataset_config(base, d, n) for d, n in pairs]
  if (not ablation and variants and 'vae_matched' in variants and
      all(n in config_lib.CONV_NETWORKS for n in networks)):
    raise errors.ConfigError(
        f'invalid flag: methods contains vae_matched, which has no conv version (networks='
        f'{",".join(networks)}); allowed: the other methods, or a dense network too')
  cells = []
  for axis_base in bases:
    if ablation:
      seeds = tuple(seeds if seeds is not None else preset.seeds)
      cells.extend(_ablation_cells(axis_base, preset, ablation_base, ablation_axes, seeds))
    else:
      cells.extend(_plan_one(axis_base, preset, variants=variants, seeds=seeds,
                             component_grid=component_grid))
  return cells


def _ablation_cells(base: config_lib.Config, preset: Preset, variant: str,
                    axes: Optional[Sequence[str]], seeds: Sequence[int]) -> List[Cell]:
  """The ablation grid of `variant` for one dataset and network: default first, per seed."""
  cells = []
  for seed in seeds:
    default = variant_config(base.replace(method='rme'), variant, preset.num_components,
                             seed).replace(selection=_selection(preset, variant)).validate()
    cells.append(Cell(variant, default, 'valid', 'default'))
    for axis, values in ABLATIONS.items():
      if axes is not None and axis not in axes:
        continue
      for value in values:
        if axis == 'component_objective':  # boosted, with the variant's bound
          cfg = variant_config(default, 'boosted', default.num_components, seed).replace(
              **VARIANT_FIELDS.get(variant, {})).validate()
        else:
          cfg = default.replace(**{axis: value}).validate()
        cells.append(Cell(variant, cfg, 'valid', f'{axis}={value}'))
  return cells


def _plan_one(base: config_lib.Config, preset: Preset, *,
              variants: Optional[Sequence[str]], seeds: Optional[Sequence[int]],
              component_grid: Optional[Sequence[int]]) -> List[Cell]:
  """`plan`'s method grid for one dataset and network (base's)."""
  seeds = tuple(seeds if seeds is not None else preset.seeds)
  cells = []
  variants = tuple(variants or preset.variants)
  for variant in variants:
    if variant not in VARIANTS:
      raise errors.ConfigError(
          f'invalid flag: methods contains {variant!r}; allowed: {", ".join(VARIANTS)}')
  if base.network in config_lib.CONV_NETWORKS:  # vae_matched widens a dense encoder
    variants = tuple(v for v in variants if v != 'vae_matched')
  grid = sorted(set(component_grid if component_grid is not None else preset.component_grid)
                | {preset.num_components})
  for seed in seeds:
    for variant in variants:
      if variant in preset.first_seed_only and seed != seeds[0]:
        continue
      ms = grid if variant == 'rme' else [preset.num_components]
      for m in ms:
        cfg = variant_config(base, variant, m, seed).replace(
            selection=_selection(preset, variant)).validate()
        cells.append(Cell(variant, cfg, 'test'))
  # The first-seed-only and the slow variants last, so every other cell finishes first.
  return sorted(cells, key=lambda c: (c.variant in preset.first_seed_only,
                                      c.variant in SLOW_VARIANTS))


def _selection(preset: Preset, variant: str) -> str:
  """The Config.selection of `variant`'s cells under `preset`."""
  return 'log_likelihood' if variant in preset.log_likelihood_selection else 'elbo'


def run_name(cfg: config_lib.Config) -> str:
  """Training directory name: readable prefix and a hash of the whole config."""
  digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
  axes = ''.join(f'{v}-' for v in _axes_tags(cfg))  # dataset / network, when not the defaults
  return f'{cfg.method}-{axes}M{cfg.num_components}-s{cfg.seed}-{digest}'


# ----------------------------------------------------------------------- run
def run_cell(cell: Cell, workdir: str, *, num_importance_samples: int, examples: int,
             load_data: Optional[Callable], make_networks: Optional[Callable],
             log: Callable[[str], None], eval_seed: int = 0, stratified: bool = False) -> Dict:
  """Trains (or resumes) the cell's model and evaluates it on its split; returns its row.

  The row is `evaluation.rows.evaluate_run`'s (the main job's and
  launch/evaluate.py's schema) with the cell's id, variant and ablation.
  """
  from rec_vae_tf.training import loop as loop_lib  # pylint: disable=g-import-not-at-top
  cfg = cell.config
  run_dir = os.path.join(workdir, 'runs', run_name(cfg))
  result = loop_lib.train(cfg, run_dir, load_data=load_data, make_networks=make_networks,
                          log=log)
  row = rows_lib.evaluate_run(
      run_dir, result.trainer, splits=result.splits, train_seconds=result.train_seconds,
      epochs_done=len(result.history), num_importance_samples=num_importance_samples,
      split=cell.split, examples=examples, eval_seed=eval_seed, stratified=stratified, log=log)
  return {'cell': cell.cell_id, 'variant': cell.variant, 'ablation': cell.ablation, **row,
          'run_dir': os.path.relpath(run_dir, workdir)}


def _finished(row: Dict, cell: Cell, stratified: bool, ignore: Sequence[str] = ()) -> bool:
  """Whether a cell's saved row can be reused.

  Same config (the fields in `ignore` aside), today's fields, the estimates asked for.
  """
  def fields(config):
    return {k: v for k, v in config.items() if k not in ignore} if isinstance(config, dict) else config
  return (fields(row.get('config')) == fields(cell.config.to_dict()) and
          set(rows_lib.FIELDS) <= set(row) and
          (not stratified or row.get('log_likelihood_stratified') is not None))


def run_grid(cells: Sequence[Cell], workdir: str, *, num_importance_samples: int,
             test_examples: int, valid_examples: int, load_data: Optional[Callable] = None,
             make_networks: Optional[Callable] = None, stratified: bool = False,
             log: Callable[[str], None] = print) -> List[Dict]:
  """Runs every unfinished cell (finished ones are read back); returns all rows.

  load_data, make_networks: injectable for tests; None: what each cell's config
  selects (`rec_vae_tf.models.builders`, through `loop.train`).
  """
  from rec_vae_tf.training import runstate  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.training import workdir_lock  # pylint: disable=g-import-not-at-top
  runstate.check_workdir(workdir)
  with workdir_lock.hold(workdir):  # one writer (training/workdir_lock.py)
    os.makedirs(os.path.join(workdir, 'cells'), exist_ok=True)
    rows, start = [], time.perf_counter()
    done_before = sum(os.path.exists(_cell_path(workdir, c)) for c in cells)
    log(f'{len(cells)} cells, {done_before} already finished')
    for i, cell in enumerate(cells):
      path = _cell_path(workdir, cell)
      if os.path.exists(path):
        with open(path) as f:
          row = json.load(f)
        if _finished(row, cell, stratified):
          rows.append(row)
          continue
        log(f'{path} was written for another config or by older code; running the cell again '
            '(a finished training is reused)')
      tag = ' '.join([cell.ablation or cell.variant] + _axes_tags(cell.config))
      log(f'[{i + 1}/{len(cells)}] {tag} M={cell.config.num_components} seed={cell.config.seed} '
          f'({cell.split}; {time.perf_counter() - start:.0f}s into this run)')
      row = run_cell(cell, workdir, num_importance_samples=num_importance_samples,
                     examples=test_examples if cell.split == 'test' else valid_examples,
                     load_data=load_data, make_networks=make_networks, stratified=stratified,
                     log=lambda s, t=tag: log(f'  [{t}] {s}'))
      config_lib.write_json_atomic(path, row)
      log(f'  [{tag}] {cell.split} log p(x) {row["log_likelihood"]:.2f}, ELBO {row["elbo"]:.2f}, '
          f'{row["seconds_per_epoch"]:.1f} s/epoch, {row["inference_ms_per_batch"]:.2f} ms/batch')
      rows.append(row)
    return rows


def _cell_path(workdir: str, cell: Cell) -> str:
  return os.path.join(workdir, 'cells', cell.cell_id + '.json')


# ------------------------------------------------------------------- reports
CSV_FIELDS = ('cell', 'variant', 'ablation') + rows_lib.FIELDS + ('run_dir',)


def write_rows(rows: Sequence[Dict], workdir: str, stem: str = 'cells') -> None:
  config_lib.write_json_atomic(os.path.join(workdir, stem + '.json'), list(rows))
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  config_lib.write_text_atomic(os.path.join(workdir, stem + '.csv'), text.getvalue())


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _pm(mean: float, std: float, digits: int = 2) -> str:
  if math.isnan(std):
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ± {std:.{digits}f}'


# Row fields that rows written before they existed lack.
_ROW_DEFAULTS = {'dataset': DEFAULT_DATASET, 'network': DEFAULT_NETWORK}


def _field(row: Dict, name: str):
  return row[name] if name in row else _ROW_DEFAULTS[name]


def summarize(rows: Sequence[Dict],
              key=('dataset', 'network', 'variant', 'num_components')) -> List[Dict]:
  """Mean and std over seeds of each group of rows (grouped by `key`), in first-seen order."""
  groups: Dict[tuple, List[Dict]] = {}
  for r in rows:
    groups.setdefault(tuple(_field(r, k) for k in key), []).append(r)
  out = []
  for k, rs in groups.items():
    entry = dict(zip(key, k))
    entry['seeds'] = len(rs)
    fields = ['log_likelihood', 'elbo', 'seconds_per_epoch', 'inference_ms_per_batch']
    for optional in ('bits_per_dim', 'benchmark_seconds_per_epoch'):
      if all(r.get(optional) is not None for r in rs):
        fields.append(optional)
    for field in fields:
      entry[field], entry[field + '_std'] = _mean_std([r[field] for r in rs])
    # The estimator's own uncertainty: each seed's standard error, averaged (and the
    # stratified estimate where every seed has one).
    for field in ('log_likelihood_se', 'log_likelihood_stratified'):
      values = [r.get(field) for r in rs]
      entry[field] = float(np.mean(values)) if all(v is not None for v in values) else None
    entry['num_parameters'] = rs[0]['num_parameters']
    entry['num_importance_samples'] = rs[0]['num_importance_samples']
    entry['num_examples'] = rs[0]['num_examples']
    out.append(entry)
  return out


def _number(value: Optional[float], digits: int = 2) -> str:
  return '' if value is None else f'{value:.{digits}f}'


def method_table(rows: Sequence[Dict], epoch_seconds: Optional[Dict[str, float]] = None) -> str:
  """Markdown: one line per (variant, M), mean ± std over seeds.

  With a dataset or network other than mnist / small in the rows, a line is per
  (dataset, network, variant, M) and the table gets those columns; with a
  colour dataset, a bits/dim column (blank for binary datasets). epoch_seconds
  (cell id -> seconds per epoch at the benchmark's cost per step,
  `benchmark_epoch_seconds`): a column of them when every test cell has one.
  """
  tests = [r for r in rows if r['split'] == 'test']
  derived = bool(tests) and all(r['cell'] in (epoch_seconds or {}) for r in tests)
  if derived:
    tests = [dict(r, benchmark_seconds_per_epoch=epoch_seconds[r['cell']]) for r in tests]
  summary = summarize(tests)
  axes = any((s['dataset'], s['network']) != (DEFAULT_DATASET, DEFAULT_NETWORK)
             for s in summary)
  bits = any(s['dataset'] in config_lib.COLOUR_DATASETS for s in summary)
  strat = any(s.get('log_likelihood_stratified') is not None for s in summary)
  lines = ['| ' + ('dataset | network | ' if axes else '') + 'method | M | seeds | test log p(x) | '
           + ('bits/dim | ' if bits else '') + 'test ELBO | parameters | s/epoch | '
           + ('s/epoch (benchmark) | ' if derived else '') +
           'inference ms/batch | s.e. |' + (' stratified |' if strat else ''),
           '|' + '---|' * (9 + 2 * axes + bits + strat + derived)]
  for s in summary:
    colour = s['dataset'] in config_lib.COLOUR_DATASETS and 'bits_per_dim' in s
    lines.append(
        '| ' + (f'{s["dataset"]} | {s["network"]} | ' if axes else '') +
        f'{DISPLAY.get(s["variant"], s["variant"])} | {s["num_components"]} | {s["seeds"]} | '
        f'{_pm(s["log_likelihood"], s["log_likelihood_std"])} | '
        + ((f'{_pm(s["bits_per_dim"], s["bits_per_dim_std"], 3)} | ' if colour else ' | ')
           if bits else '') +
        f'{_pm(s["elbo"], s["elbo_std"])} | '
        f'{s["num_parameters"]:,} | {_pm(s["seconds_per_epoch"], s["seconds_per_epoch_std"], 1)} | '
        + (f'{_pm(s["benchmark_seconds_per_epoch"], s["benchmark_seconds_per_epoch_std"], 1)} | '
           if derived else '') +
        f'{_pm(s["inference_ms_per_batch"], s["inference_ms_per_batch_std"])} | '
        f'{_number(s.get("log_likelihood_se"))} |' +
        (f' {_number(s.get("log_likelihood_stratified"))} |' if strat else ''))
  if summary:
    lines.append('')
    lines.append(f'log p(x): importance sampling with K = {summary[0]["num_importance_samples"]} '
                 f'on {summary[0]["num_examples"]} test images; inference: median time of one '
                 'posterior pass over a batch (refinement steps included for savae / vae+svi, '
                 'one flow pass for iaf / hf); s.e.: the standard error of a seed\'s test '
                 'log p(x) (per-image estimates\' std / sqrt(N)), averaged over seeds'
                 + ('; s/epoch: as the run measured it (with whatever load the machine had); '
                    's/epoch (benchmark): the run\'s training steps at the benchmark\'s cost per '
                    'step of its method and active-component count (launch/benchmark.py '
                    '--grid_preset, measured side by side), per epoch' if derived else '')
                 + ('; stratified: the stratified estimate (K / M from each component), mean '
                    'over seeds' if strat else '') + '.')
  return '\n'.join(lines) + '\n'


def ablation_table(rows: Sequence[Dict]) -> str:
  """Markdown: validation log-likelihood per ablation setting, with the difference to the default."""
  valid = [r for r in rows if r['split'] == 'valid']
  summary = summarize(valid, key=('ablation',))
  by_name = {s['ablation']: s for s in summary}
  default = by_name.get('default')
  lines = ['| setting | seeds | valid log p(x) | vs default | valid ELBO |',
           '|---|---|---|---|---|']
  for s in sorted(summary, key=lambda s: (s['ablation'] != 'default', s['ablation'])):
    delta = s['log_likelihood'] - default['log_likelihood'] if default else math.nan
    lines.append(f'| {s["ablation"]} | {s["seeds"]} | '
                 f'{_pm(s["log_likelihood"], s["log_likelihood_std"])} | {delta:+.2f} | '
                 f'{_pm(s["elbo"], s["elbo_std"])} |')
  if default:
    best = max(summary, key=lambda s: s['log_likelihood'])
    lines.append('')
    variants = sorted({r['variant'] for r in valid})
    lines.append(f'Ablations of {", ".join(variants)}. Best by validation log p(x): {best["ablation"]} '
                 f'({best["log_likelihood"] - default["log_likelihood"]:+.2f} nats vs the default); '
                 f'K = {default["num_importance_samples"]} on {default["num_examples"]} validation images.')
  return '\n'.join(lines) + '\n'


def _by_axes(items: Sequence[Dict]) -> Dict[Tuple[str, str], List[Dict]]:
  """Rows or summary entries grouped by (dataset, network), in first-seen order."""
  groups: Dict[Tuple[str, str], List[Dict]] = {}
  for item in items:
    groups.setdefault((_field(item, 'dataset'), _field(item, 'network')), []).append(item)
  return groups


def _axes_suffix(dataset: str, network: str) -> str:
  """'' for mnist / small, else e.g. '_svhn_conv_small': the suffix of a plot's file name."""
  return ''.join(f'_{v}' for v, default in ((dataset, DEFAULT_DATASET), (network, DEFAULT_NETWORK))
                 if v != default)


def write_reports(rows: Sequence[Dict], workdir: str,
                  step_seconds: Optional[Dict[str, Dict[str, float]]] = None) -> Dict[str, str]:
  """The rows as JSON and CSV, table.md and its plots or ablation.md; returns the markdown.

  With validation log p(x) in the runs' histories, also the time-to-quality
  plots and curves.md (`curve_table`); their seconds are derived from
  step_seconds when it covers every method (`load_step_seconds`).

  Each test row's run history is copied to histories/<cell>.json
  (`keep_histories`): with them and cells.json the folder rebuilds its
  reports alone (`launch/reproduce.py --reports_only`).

  The method grid writes cells.json / cells.csv, the ablation grid
  ablation_cells.json / .csv, so both can share one workdir (and its trainings).
  """
  from rec_vae_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  ablation_only = all(r['split'] == 'valid' for r in rows)
  write_rows(rows, workdir, 'ablation_cells' if ablation_only else 'cells')
  keep_histories(rows, workdir)
  out = {}
  if any(r['split'] == 'test' for r in rows):
    out['table.md'] = method_table(
        rows, benchmark_epoch_seconds(rows, workdir, step_seconds) if step_seconds else None)
    summary = summarize([r for r in rows if r['split'] == 'test'])
    # One pair of plots per (dataset, network); file names carry them unless mnist / small.
    for (dataset, network), group in _by_axes(summary).items():
      stem = _axes_suffix(dataset, network)
      plots.save_ll_vs_components(group, os.path.join(workdir, f'll_vs_components{stem}.png'),
                                  DISPLAY)
      plots.save_ll_vs_time(group, os.path.join(workdir, f'll_vs_inference_time{stem}.png'),
                            DISPLAY)
    curves = _save_time_to_quality(rows, workdir, step_seconds)
    if curves:
      out['curves.md'] = curve_table(curves)
    selection, _ = validation_selection(rows, workdir)
    if selection:
      out['selection.md'] = selection
  if any(r['split'] == 'valid' for r in rows):
    out['ablation.md'] = ablation_table(rows)
  for name, text in out.items():
    config_lib.write_text_atomic(os.path.join(workdir, name), text)
  return out


# Settings chosen on the validation split: family -> the variants that compete in it.
SELECTION_GROUPS = {
    'RME (bound, gradients to the encoders)': ('rme', 'rme_iw', 'rme_iw_enc'),
    'IWAE encoder gradients': ('iwae', 'iwae_dreg'),
}


def _final_valid_log_likelihood(workdir: str, row: Dict) -> Optional[float]:
  """The last validation log p(x) of the row's run (`_history`), or None."""
  values = [h['valid_log_likelihood'] for h in _history(row, workdir) or ()
            if isinstance(h, dict) and 'valid_log_likelihood' in h]
  return float(values[-1]) if values else None


def validation_selection(rows: Sequence[Dict], workdir: str) -> Tuple[str, Dict[str, str]]:
  """Markdown, and family -> chosen variant, by the last validation log p(x) of each run.

  Each family of `SELECTION_GROUPS` with at least two variants in `rows` is
  decided by the mean over seeds of the final validation log p(x) (history.json:
  valid_log_likelihood_samples samples on the first valid_log_likelihood_examples
  validation images), over the seeds every variant of the family has (a grid
  still running would otherwise set one variant's lucky seed against another's
  two); no test number takes part. Families without it: nothing.
  """
  lines, chosen = [], {}
  for family, variants in SELECTION_GROUPS.items():
    by_seed: Dict[str, Dict[int, float]] = {}
    for r in rows:
      if r['split'] == 'test' and r['variant'] in variants:
        value = _final_valid_log_likelihood(workdir, r)
        if value is not None:
          by_seed.setdefault(r['variant'], {})[r.get('seed', 0)] = value
    common = sorted(set.intersection(*[set(v) for v in by_seed.values()])) if by_seed else []
    if len(by_seed) < 2 or not common:
      continue
    scores = {v: [values[seed] for seed in common] for v, values in by_seed.items()}
    left_out = sorted(set().union(*[set(v) for v in by_seed.values()]) - set(common))
    means = {v: float(np.mean(x)) for v, x in scores.items()}
    best = max(means, key=means.get)
    chosen[family] = best
    seeds_text = ', '.join(map(str, common))
    lines += [f'**{family}**: chosen `{best}` on validation (seed{"s" if len(common) > 1 else ""} '
              f'{seeds_text}: those every variant has'
              + (f'; left out: {", ".join(map(str, left_out))}' if left_out else '') + ')', '',
              '| variant | seeds | final validation log p(x) | std | vs chosen |',
              '|---|---|---|---|---|']
    for v in sorted(means, key=means.get, reverse=True):
      lines.append(f'| {DISPLAY.get(v, v)} | {len(scores[v])} | {means[v]:.2f} | '
                   f'{float(np.std(scores[v])):.2f} | {means[v] - means[best]:+.2f} |')
    lines.append('')
  return '\n'.join(lines), chosen


# Where write_reports keeps a copy of each row's run history (<cell>.json), so that the
# reports can be rebuilt from a results folder that holds no runs (`--reports_only`).
HISTORIES_DIR = 'histories'


def _history_file(row: Dict, workdir: str) -> str:
  """The row's run history.json, or where there is none the copy in HISTORIES_DIR."""
  run = os.path.join(workdir, row.get('run_dir') or '', 'history.json')
  if row.get('run_dir') and os.path.exists(run):
    return run
  return os.path.join(workdir, HISTORIES_DIR, row['cell'] + '.json')


def keep_histories(rows: Sequence[Dict], workdir: str) -> int:
  """Copies each test row's run history into <workdir>/histories/<cell>.json; returns how many.

  A run directory holds checkpoints and is not meant to be committed or kept;
  these small copies are what the curves, selection.md and the derived seconds
  need to be rebuilt later. A row whose run is gone keeps the copy it has.
  """
  kept = 0
  for r in rows:
    run = os.path.join(workdir, r.get('run_dir') or '', 'history.json')
    if r['split'] != 'test' or not r.get('run_dir') or not os.path.exists(run):
      continue
    with open(run) as f:
      history = json.load(f)
    os.makedirs(os.path.join(workdir, HISTORIES_DIR), exist_ok=True)
    config_lib.write_json_atomic(os.path.join(workdir, HISTORIES_DIR, r['cell'] + '.json'), history)
    kept += 1
  return kept


def finished_rows(cells: Sequence[Cell], workdir: str, stratified: bool = False
                  ) -> Tuple[List[Dict], List[Cell]]:
  """The saved rows of the cells that finished in workdir, and the cells that did not.

  A row comes from cells/<cell>.json (a grid's workdir) or else from cells.json
  (a results folder such as results/long); either way only when `_finished`
  accepts it for the cell's config, wherever its data lay (data_dir aside).
  """
  saved = {}
  try:
    with open(os.path.join(workdir, 'cells.json')) as f:
      saved = {r['cell']: r for r in json.load(f)}
  except (OSError, ValueError, TypeError, KeyError):
    pass
  rows, missing = [], []
  for cell in cells:
    row = saved.get(cell.cell_id)
    try:
      with open(_cell_path(workdir, cell)) as f:
        row = json.load(f)
    except (OSError, ValueError):
      pass
    if row is not None and _finished(row, cell, stratified, ignore=('data_dir',)):
      rows.append(row)
    else:
      missing.append(cell)
  return rows, missing


def _history(row: Dict, workdir: str,
             step_seconds: Optional[Dict[str, Dict[str, float]]] = None) -> Optional[List[dict]]:
  """The row's run history (history.json), or None where it cannot be read.

  step_seconds (variant -> active count as a string -> seconds per training
  step, `launch/benchmark.py --grid_preset`): each entry also gets
  'step_cost_seconds', the training seconds up to its epoch had every step
  cost what the benchmark measured (each epoch's steps at its active count),
  where the row's variant and every count it passed through were measured.
  """
  try:
    with open(_history_file(row, workdir)) as f:
      history = json.load(f)
  except (OSError, ValueError):
    return None
  costs = (step_seconds or {}).get(row['variant'])
  if costs and all(str(h.get('num_active')) in costs and 'step' in h for h in history):
    total, step = 0.0, 0
    for h in history:
      total += (h['step'] - step) * costs[str(h['num_active'])]
      step = h['step']
      h['step_cost_seconds'] = total
  return history


def _validation_curves(rows: Sequence[Dict], workdir: str,
                       step_seconds: Optional[Dict[str, Dict[str, float]]] = None
                       ) -> Dict[str, List[List[dict]]]:
  """Display name -> one list per seed of the history entries that carry a validation log p(x).

  From the test rows' runs (`_history`, with the derived 'step_cost_seconds'
  where step_seconds covers the run); only runs whose config recorded
  validation log p(x) (valid_log_likelihood_every) take part. A mixture's name
  carries its M.
  """
  curves: Dict[str, List[List[dict]]] = {}
  for r in rows:
    if r['split'] != 'test':
      continue
    history = [h for h in _history(r, workdir, step_seconds) or () if 'valid_log_likelihood' in h]
    if history:
      name = DISPLAY.get(r['variant'], r['variant'])
      if r['variant'] in MIXTURE_VARIANTS:
        name += f' M={r["num_components"]}'
      curves.setdefault(name, []).append(history)
  return curves


def benchmark_epoch_seconds(rows: Sequence[Dict], workdir: str,
                            step_seconds: Dict[str, Dict[str, float]]) -> Dict[str, float]:
  """Cell id -> its run's derived training seconds per epoch, where they can be derived.

  From the run's history (`_history`: the steps it took at each active count),
  or where the history is gone from its config (`scheduled_epoch_seconds`).
  """
  out = {}
  for r in rows:
    history = _history(r, workdir, step_seconds)
    if history and 'step_cost_seconds' in history[-1]:
      out[r['cell']] = history[-1]['step_cost_seconds'] / history[-1]['epoch']
    elif history is None:
      seconds = scheduled_epoch_seconds(r, step_seconds)
      if seconds is not None:
        out[r['cell']] = seconds
  return out


def scheduled_epoch_seconds(row: Dict, step_seconds: Dict[str, Dict[str, float]]
                            ) -> Optional[float]:
  """Seconds per epoch of the row's training at the benchmark's cost per step, from its config.

  Every step is priced at the active count the recursion schedule gives it
  (`rec_vae_tf.training.schedule`); the same as from the history for a run
  that trained its whole config. None where the variant, a count it passes
  through or the config's dataset is unknown.
  """
  from rec_vae_tf.training import schedule  # pylint: disable=g-import-not-at-top
  costs = step_seconds.get(row['variant'])
  try:
    cfg = config_lib.Config.from_dict(row['config'])
    spec = data_catalog.SPECS[cfg.dataset]
  except (errors.ConfigError, KeyError, TypeError):
    return None
  num_train = spec.split_sizes[0]
  if cfg.train_examples:
    num_train = min(num_train, cfg.train_examples)
  steps_per_epoch = data_lib.steps_per_epoch(num_train, cfg.batch_size)
  total_steps = cfg.epochs * steps_per_epoch
  if not costs or not total_steps:
    return None
  seconds, step = 0.0, 0
  while step < total_steps:
    nxt = schedule.next_activation_step(cfg, step, steps_per_epoch) or total_steps
    active = str(schedule.num_active_at(cfg, step, steps_per_epoch))
    if active not in costs:
      return None
    seconds += (min(nxt, total_steps) - step) * costs[active]
    step = nxt
  return seconds / cfg.epochs


def _seconds_field(curves: Dict[str, List[List[dict]]]) -> str:
  """'step_cost_seconds' when every run of every curve has it, else 'train_seconds'."""
  derived = all('step_cost_seconds' in h for runs in curves.values() for run in runs for h in run)
  return 'step_cost_seconds' if derived else 'train_seconds'


def _mean_curve(runs: Sequence[List[dict]], field: str) -> Dict[int, float]:
  """Epoch -> the mean of `field` over the runs, at the epochs every run recorded."""
  common = sorted(set.intersection(*[{h['epoch'] for h in run} for run in runs]))
  return {e: float(np.mean([next(h[field] for h in run if h['epoch'] == e) for run in runs]))
          for e in common}


def _reference_curve(curves: Dict[str, List[List[dict]]], reference: str = 'rme') -> Optional[str]:
  """The first curve named `reference` at some M ('rme M=4'), or None."""
  return next((name for name in curves if name.startswith(reference + ' M=')), None)


# The seconds axis of the time-to-quality plot, by `_seconds_field`.
SECONDS_LABELS = {
    'train_seconds': 'training seconds (this machine, under whatever load it had)',
    'step_cost_seconds': 'training seconds at the benchmark\'s cost per step (derived)',
}


def _save_time_to_quality(rows: Sequence[Dict], workdir: str,
                          step_seconds: Optional[Dict[str, Dict[str, float]]] = None
                          ) -> Dict[str, List[List[dict]]]:
  """valid_ll_vs_epochs.png, valid_ll_vs_seconds.png and, with RME among several methods,
  valid_ll_gap_vs_epochs.png; returns the curves drawn (maybe none).

  The seconds are the runs' own training seconds, or with step_seconds for
  every method the derived ones (`_validation_curves`).
  """
  from rec_vae_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  curves = _validation_curves(rows, workdir, step_seconds)
  if curves:
    field = _seconds_field(curves)
    plots.save_time_to_quality(curves, os.path.join(workdir, 'valid_ll_vs_epochs.png'),
                               os.path.join(workdir, 'valid_ll_vs_seconds.png'),
                               seconds_field=field, seconds_label=SECONDS_LABELS[field])
    reference = _reference_curve(curves)
    if reference and len(curves) > 1:
      means = {name: _mean_curve(runs, 'valid_log_likelihood') for name, runs in curves.items()}
      plots.save_gap_to_reference(means, {name: len(runs) for name, runs in curves.items()},
                                  reference, os.path.join(workdir, 'valid_ll_gap_vs_epochs.png'))
  return curves


# The table's epochs: all when there are at most this many, else the first, the last and
# every multiple of CURVE_EPOCH_STEP (compare40's length, so its gaps can be read off).
MAX_CURVE_COLUMNS = 7
CURVE_EPOCH_STEP = 40


def _curve_epochs(epochs: Sequence[int]) -> List[int]:
  if len(epochs) <= MAX_CURVE_COLUMNS:
    return list(epochs)
  return sorted({epochs[0], epochs[-1]} | {e for e in epochs if e % CURVE_EPOCH_STEP == 0})


def curve_table(curves: Dict[str, List[List[dict]]], reference: str = 'rme') -> str:
  """Markdown: validation log p(x) along training, and each method's gap to `reference`.

  A column per epoch that every run measured (a subset when there are many,
  `_curve_epochs`); a cell is the mean over seeds, with the difference to the
  reference method's mean at that epoch in brackets (positive: above it). The
  reference is the first curve whose name starts with `reference` followed by
  ' M=' (RME at its M), if any. Then, for the level every method reaches (the
  lowest final mean, floored to 0.1 nat) and for the reference's final mean
  (floored), the first measured epoch and the training seconds (mean over
  seeds; derived from the benchmark's cost per step where every run has them,
  `_seconds_field`) at which each method's mean reached it. Only validation
  numbers: no test image takes part.
  """
  means: Dict[str, Dict[int, float]] = {}
  seconds: Dict[str, Dict[int, float]] = {}
  seeds = {}
  field = _seconds_field(curves)
  for name, runs in curves.items():
    mean = _mean_curve(runs, 'valid_log_likelihood')
    if mean:
      means[name], seeds[name] = mean, len(runs)
      seconds[name] = _mean_curve(runs, field)
  if not means:
    return ''
  shared = sorted(set.intersection(*[set(m) for m in means.values()]))
  columns = _curve_epochs(shared)
  ref = _reference_curve({n: curves[n] for n in means}, reference)
  lines = ['| method | seeds | ' + ' | '.join(f'epoch {e}' for e in columns) + ' |',
           '|---|---|' + '---|' * len(columns)]
  for name, m in means.items():
    cells = []
    for e in columns:
      gap = f' ({m[e] - means[ref][e]:+.2f})' if ref and name != ref else ''
      cells.append(f'{m[e]:.2f}{gap}')
    lines.append(f'| {name} | {seeds[name]} | ' + ' | '.join(cells) + ' |')
  lines.append('')
  lines.append('Validation log p(x) (the grid\'s valid_log_likelihood_* images and samples, '
               'mean over seeds) at the epochs every run measured'
               + (f'; in brackets the difference to {ref} at the same epoch.' if ref else '.'))
  if not shared:
    return '\n'.join(lines) + '\n'
  floor = lambda value: math.floor(value * 10) / 10
  levels = [floor(min(m[shared[-1]] for m in means.values()))]
  if ref and floor(means[ref][shared[-1]]) > levels[0]:
    levels.append(floor(means[ref][shared[-1]]))
  what = ['the lowest final mean'] + ([f'{ref}\'s final mean'] if len(levels) > 1 else [])
  how = ('training seconds derived from the benchmark\'s cost per step of each method at each '
         'active-component count (`launch/benchmark.py --grid_preset`, measured side by side '
         'in one run) times the steps taken, without the validation passes; mean over seeds'
         if field == 'step_cost_seconds' else
         'training seconds as the runs measured them on this machine, mean over seeds: '
         'comparable only between runs that had the CPU to themselves')
  lines += ['', 'First measured epoch at which each method\'s mean reached '
            + ' and '.join(f'{level:.1f} nats ({w})' for level, w in zip(levels, what))
            + f', and the {how}:', '',
            '| method | ' + ' | '.join(f'epoch to {level:.1f} | seconds to {level:.1f}'
                                      for level in levels) + ' |',
            '|---|' + '---|---|' * len(levels)]
  for name, m in means.items():
    cells = []
    for level in levels:
      first = next((e for e in sorted(m) if m[e] >= level), None)
      cells += ([str(first), f'{seconds[name][first]:.0f}'] if first is not None
                else ['not reached', ''])
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def load_step_seconds(path: str) -> Dict[str, Dict[str, float]]:
  """The seconds per training step in a `launch/benchmark.py --grid_preset` JSON file.

  Returns variant -> active count (a string) -> seconds per step. Raises
  ConfigError with one line when the file is missing, unreadable or has none.
  """
  try:
    with open(path) as f:
      report = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f'invalid flag: step_costs={path!r}: cannot read it as JSON '
                           f'({e.__class__.__name__})') from None
  costs = (report.get('grid_step_seconds') or {}).get('seconds_per_step') if isinstance(
      report, dict) else None
  if not costs:
    raise errors.ConfigError(f'invalid flag: step_costs={path!r}; allowed: the --output of '
                           '`launch/benchmark.py --grid_preset=...` (it has no grid_step_seconds)')
  return costs


def save_pictures(rows: Sequence[Dict], workdir: str, *, num_components: int,
                  make_networks: Optional[Callable] = None, load_data: Optional[Callable] = None,
                  eval_seed: int = 0) -> None:
  """samples.png and reconstructions.png: one row per method (first seed, default M).

  One pair per (dataset, network), named like the plots of `write_reports`
  (samples_svhn_conv_small.png, ...). make_networks, load_data: None selects
  what each run's config names (`rec_vae_tf.models.builders`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.models import builders  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.experiments import experiment  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  tests = [r for r in rows if r['split'] == 'test']
  for (dataset, network), group in _by_axes(tests).items():
    picked = {}
    for r in group:
      if r['variant'] not in MIXTURE_VARIANTS or r['num_components'] == num_components:
        picked.setdefault(r['variant'], r)
    if not picked:
      continue
    cfg = config_lib.Config.from_dict(next(iter(picked.values()))['config'])
    splits = (load_data or builders.load_data_fn(cfg))(cfg.data_dir)
    x = next(iter(data_lib.make_eval_dataset(splits.test[:16], batch_size=16, seed=eval_seed,
                                             binarization=cfg.binarization)))
    recon, samples = {'data': x.numpy()}, {}
    for variant, r in picked.items():
      _, tr, _ = trainer_lib.restore_for_evaluation(os.path.join(workdir, r['run_dir']),
                                                    make_networks=make_networks,
                                                    num_pixels=x.shape[1])
      name = DISPLAY.get(variant, variant)
      recon[name] = experiment.decoder_mean(
          tr.decoder, experiment.posterior_sample(tr, x, eval_seed)).numpy()
      z = tf.random.stateless_normal([32, tr.cfg.latent_dim], seed=[eval_seed, 2])
      samples[name] = experiment.decoder_mean(tr.decoder, z).numpy()
    image_shape = builders.spec(cfg).image_shape
    if int(np.prod(image_shape)) != x.shape[1]:  # injected data of another size: no pictures
      continue
    x_max = 255.0 if builders.is_colour(cfg) else 1.0
    stem = _axes_suffix(dataset, network)
    plots.save_images(recon, os.path.join(workdir, f'reconstructions{stem}.png'),
                      'test images and reconstructions (decoder mean at z ~ q(z|x))',
                      image_shape=image_shape, x_max=x_max)
    plots.save_images(samples, os.path.join(workdir, f'samples{stem}.png'),
                      'samples: decoder mean at z ~ p(z)', image_shape=image_shape, x_max=x_max)
