"""PNG pictures of a run: samples, reconstructions and training curves.

Uses matplotlib's non-interactive Agg backend; every function writes one file
atomically (temporary name, then rename) and returns its path.
"""

import os
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top


def _save(fig, path: str) -> str:
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=100, bbox_inches='tight')
  plt.close(fig)
  os.replace(tmp, path)
  return path


def image_grid(images: np.ndarray, rows: int, side: int = 28,
               image_shape: Optional[Sequence[int]] = None) -> np.ndarray:
  """Flattened images [N, H*W*C] -> one mosaic of `rows` rows.

  Args:
    images: [N, H * W * C], each row an image flattened row-major, channels last.
    rows: rows of the mosaic.
    side: H = W for grey square images (when image_shape is None).
    image_shape: (H, W, C); None means (side, side, 1).
  Returns:
    [rows * H, cols * W] for one channel, [rows * H, cols * W, C] otherwise;
    empty cells are 1 (white in [0, 1] units).
  """
  height, width, channels = tuple(image_shape) if image_shape is not None else (side, side, 1)
  n = images.shape[0]
  cols = int(np.ceil(n / rows))
  grid = np.ones((rows * height, cols * width, channels), np.float32)
  for i in range(n):
    r, c = divmod(i, cols)
    grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = images[i].reshape(
        height, width, channels)
  return grid[..., 0] if channels == 1 else grid


def save_images(rows_of_images: Dict[str, np.ndarray], path: str, title: str,
                image_shape: Optional[Sequence[int]] = None, x_max: float = 1.0) -> str:
  """One labelled mosaic row per entry (e.g. data / rme / vae).

  image_shape: (H, W, C) of the flattened images (None: 28x28 grey); x_max:
  the value of white (1 for binary data and Bernoulli means, 255 for pixel values).
  """
  fig, axes = plt.subplots(len(rows_of_images), 1,
                           figsize=(12, 1.6 * len(rows_of_images) + 0.4), squeeze=False)
  for ax, (label, images) in zip(axes[:, 0], rows_of_images.items()):
    grid = image_grid(np.asarray(images, np.float32) / x_max, rows=2, image_shape=image_shape)
    ax.imshow(np.clip(grid, 0.0, 1.0), cmap='gray', vmin=0, vmax=1)
    ax.set_ylabel(label, rotation=0, ha='right', va='center')
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_title(title)
  return _save(fig, path)


def save_training_curves(histories: Dict[str, List[dict]], path: str) -> str:
  """Train and validation ELBO per epoch for each method, with activation marks."""
  fig, ax = plt.subplots(figsize=(8, 5))
  for i, (name, history) in enumerate(histories.items()):
    color = f'C{i}'
    epochs = [h['epoch'] for h in history]
    ax.plot(epochs, [h['train_mixture_elbo'] for h in history], color=color, alpha=0.5,
            linestyle='--', label=f'{name} train')
    valid = [(h['epoch'], h['valid_mixture_elbo']) for h in history if 'valid_mixture_elbo' in h]
    if valid:
      ax.plot(*zip(*valid), color=color, label=f'{name} validation')
    previous = 1
    for h in history:
      if h['num_active'] != previous:
        ax.axvline(h['epoch'], color=color, alpha=0.2)
        previous = h['num_active']
  finite = [h[k] for hs in histories.values() for h in hs
            for k in ('train_mixture_elbo', 'valid_mixture_elbo') if k in h]
  if finite:
    top = max(finite)
    ax.set_ylim(np.percentile(finite, 10) - 5, top + 2)
  ax.set_xlabel('epoch (vertical lines: a component activated)')
  ax.set_ylabel('ELBO of Q (nats)')
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def save_weights(names: Sequence[str], weights: Sequence[Sequence[float]], path: str) -> str:
  """Average mixture weight of each component, per mixture method (M > 1 only)."""
  pairs = [(n, w) for n, w in zip(names, weights) if len(w) > 1]
  fig, ax = plt.subplots(figsize=(6, 4))
  width = 0.8 / max(len(pairs), 1)
  for i, (name, w) in enumerate(pairs):
    ax.bar(np.arange(1, len(w) + 1) + (i - (len(pairs) - 1) / 2) * width, w, width=width,
           label=name)
  most = max((len(w) for _, w in pairs), default=1)
  ax.set_xticks(np.arange(1, most + 1))
  ax.set_xlabel('component m (in order of activation)')
  ax.set_ylabel('average weight alpha_m(x) on the test set')
  if pairs:
    ax.legend()
  else:
    ax.set_title('no mixture method in this run')
  return _save(fig, path)


def save_ll_vs_components(summary: Sequence[dict], path: str,
                          display: Dict[str, str]) -> Optional[str]:
  """Test log-likelihood (mean, std error bars over seeds) against M, per variant with several M.

  Single-encoder variants appear as one point at M = 1 (the VAE) or are left out.
  Nothing is drawn (None) when no variant was run at several M (a grid
  without a component axis).
  """
  by_variant: Dict[str, list] = {}
  for s in summary:
    by_variant.setdefault(s['variant'], []).append(s)
  if all(len(entries) < 2 for entries in by_variant.values()):
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (variant, entries) in enumerate(by_variant.items()):
    if len(entries) < 2 and variant != 'vae':
      continue
    entries = sorted(entries, key=lambda s: s['num_components'])
    m = [s['num_components'] for s in entries]
    ll = [s['log_likelihood'] for s in entries]
    err = [0.0 if np.isnan(s['log_likelihood_std']) else s['log_likelihood_std'] for s in entries]
    ax.errorbar(m if variant != 'vae' else [1], ll, yerr=err, marker='o', capsize=3,
                color=f'C{i}', label=display.get(variant, variant))
  ax.set_xlabel('number of components M')
  ax.set_ylabel('test log p(x) (nats, higher is better)')
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def save_ll_vs_time(summary: Sequence[dict], path: str, display: Dict[str, str]) -> str:
  """Test log-likelihood against inference time per batch (log scale): one point per
  (variant, M), labelled with M for the mixtures."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, s in enumerate(summary):
    label = display.get(s['variant'], s['variant'])
    if s['num_components'] > 1:
      label += f' (M={s["num_components"]})'
    err = 0.0 if np.isnan(s['log_likelihood_std']) else s['log_likelihood_std']
    ax.errorbar([s['inference_ms_per_batch']], [s['log_likelihood']], yerr=[err], marker='o',
                capsize=3, color=f'C{i % 10}')
    ax.annotate(label, (s['inference_ms_per_batch'], s['log_likelihood']), fontsize=7,
                xytext=(4, 3), textcoords='offset points')
  ax.set_xscale('log')
  ax.set_xlabel('inference time per test batch (ms, log scale)')
  ax.set_ylabel('test log p(x) (nats, higher is better)')
  ax.grid(alpha=0.3, which='both')
  return _save(fig, path)


def save_time_to_quality(curves: Dict[str, List[List[dict]]], path_epochs: str,
                         path_seconds: str, *, seconds_field: str = 'train_seconds',
                         seconds_label: str = 'training seconds (this machine)') -> List[str]:
  """Validation log p(x) against epochs and against training seconds, one line per method.

  Args:
    curves: display name -> one list per seed of history entries that carry
      'valid_log_likelihood' (and 'epoch', 'train_seconds'). A method's line is
      the mean over its seeds at each recorded epoch (and their mean seconds);
      with several seeds a band shows their range.
    path_epochs, path_seconds: the two PNG files.
    seconds_field, seconds_label: the entries' seconds to draw against (e.g. the
      derived 'step_cost_seconds') and the axis label.
  Returns:
    The two paths.
  """
  figs = {key: plt.subplots(figsize=(7, 4.5)) for key in ('epoch', 'train_seconds')}
  for name, runs in curves.items():
    epochs = sorted(set.intersection(*[{h['epoch'] for h in run} for run in runs]))
    if not epochs:
      continue
    pick = lambda run, field: [next(h[field] for h in run if h['epoch'] == e) for e in epochs]
    ll = np.array([pick(run, 'valid_log_likelihood') for run in runs])  # [seeds, points]
    seconds = np.array([pick(run, seconds_field) for run in runs]).mean(0)
    for key, x in (('epoch', np.array(epochs)), ('train_seconds', seconds)):
      ax = figs[key][1]
      line, = ax.plot(x, ll.mean(0), marker='.', label=f'{name} ({len(runs)} seed'
                      f'{"s" if len(runs) > 1 else ""})')
      if len(runs) > 1:
        ax.fill_between(x, ll.min(0), ll.max(0), color=line.get_color(), alpha=0.15)
  paths = []
  for key, path, xlabel in (('epoch', path_epochs, 'epoch'),
                            ('train_seconds', path_seconds, seconds_label)):
    fig, ax = figs[key]
    ax.set_xlabel(xlabel)
    ax.set_ylabel('validation log p(x) (nats)')
    ax.set_title('time to quality: validation log p(x), importance-sampled')
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
    paths.append(_save(fig, path))
  return paths


def save_gap_to_reference(means: Dict[str, Dict[int, float]], seeds: Dict[str, int],
                          reference: str, path: str) -> str:
  """Each method's validation log p(x) minus the reference's, against epochs.

  Args:
    means: name -> epoch -> validation log p(x), the mean over the method's
      seeds; `reference` must be one of the names. A line covers the epochs
      both it and the reference have; above zero the method is ahead.
    seeds: name -> its number of seeds (for the legend).
    reference: the name of the curve subtracted (drawn as the zero line).
    path: the PNG file.
  Returns:
    The path.
  """
  ref = means[reference]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.axhline(0.0, color='black', linewidth=1, label=f'{reference} (reference)')
  for name, curve in means.items():
    epochs = [e for e in sorted(curve) if e in ref]
    if name != reference and epochs:
      ax.plot(epochs, [curve[e] - ref[e] for e in epochs], marker='.',
              label=f'{name} ({seeds[name]} seed{"s" if seeds[name] > 1 else ""})')
  ax.set_xlabel('epoch')
  ax.set_ylabel(f'validation log p(x) minus {reference} (nats)')
  ax.set_title('gap to the reference along training (above 0: ahead)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
