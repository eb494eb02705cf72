"""The training loop: recursion stages, resumption, tracing, freezing, routing, NaN guard."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rec_vae_tf import config as config_lib
from rec_vae_tf.data import pipeline as data_lib
from rec_vae_tf.data import sources as data_sources
from rec_vae_tf import errors
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf.models import networks
from rec_vae_tf.methods import objective
from rec_vae_tf.methods import semi_amortized
from rec_vae_tf.training import trainer as trainer_lib
from rec_vae_tf.training import loop as loop_lib
from rec_vae_tf.training import runstate
from rec_vae_tf.training import schedule

P = 12  # pixels
N_TRAIN, BATCH = 24, 4  # 6 steps per epoch


def _load_data(data_dir, train_examples=None):
  del data_dir
  rng = np.random.default_rng(0)
  images = (rng.random([N_TRAIN + 12, P]) * 255).astype(np.uint8)
  train = images[:N_TRAIN][:train_examples] if train_examples else images[:N_TRAIN]
  return data_sources.Splits(train=train, valid=images[N_TRAIN:N_TRAIN + 6], test=images[N_TRAIN + 6:])


def _tiny_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels):
  del hidden_units
  return networks.build_networks(num_components, (8,), latent_dim, eps_mode, seed, num_pixels)


def _smooth_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels):
  """tanh instead of ReLU, for tests that compare a compiled step with an eager gradient.

  With ReLU, a pre-activation within rounding of 0 can switch sides between the two
  computations and change one example's gradient through that unit.
  """
  del hidden_units
  encoder = networks.MixtureEncoder(num_components, (8,), latent_dim, eps_mode,
                                    activation='tanh', seed=seed, name='encoder')
  decoder = networks.BernoulliDecoder((8,), num_pixels, activation='tanh', seed=seed + 1000,
                                      name='decoder')
  encoder.build((None, num_pixels))
  decoder.build((None, latent_dim))
  return encoder, decoder


def _cfg(**kw):
  base = dict(num_components=3, latent_dim=2, epochs=3, epochs_per_component=1.0,
              batch_size=BATCH, eval_batch_size=4, learning_rate=1e-2, xla=False, seed=1)
  base.update(kw)
  return config_lib.Config(**base).validate()


def _train(cfg, workdir, **kw):
  return loop_lib.train(cfg, str(workdir), load_data=_load_data, make_networks=_tiny_networks,
                        log=lambda s: None, **kw)


def _values(trainer):
  return [v.numpy().copy() for v in trainer.all_vars]


def test_schedule():
  cfg = _cfg()
  assert [schedule.num_active_at(cfg, s, 6) for s in (0, 5, 6, 11, 12, 100)] == [1, 1, 2, 2, 3, 3]
  assert schedule.next_activation_step(cfg, 0, 6) == 6
  assert schedule.next_activation_step(cfg, 12, 6) is None
  assert schedule.num_active_at(cfg.replace(schedule='simultaneous'), 0, 6) == 3


def test_two_stages_then_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
  cfg = _cfg()
  full = _train(cfg, tmp_path / 'full')
  assert full.steps == 18
  assert int(full.trainer.step.numpy()) == full.trainer.best_step.numpy()  # selected at the end
  assert [h['num_active'] for h in full.history] == [1, 2, 3]

  part = _train(cfg, tmp_path / 'part', stop_after_steps=8)  # mid-epoch, in stage 2
  assert part.steps == 8 and int(part.trainer.num_active.numpy()) == 2
  ckpt = tf.train.latest_checkpoint(str(tmp_path / 'part' / runstate.CHECKPOINT_DIR))
  assert ckpt.endswith('-8')
  resumed = _train(cfg, tmp_path / 'part')  # a fresh Trainer, as after a crash
  assert resumed.steps == 18 and int(resumed.trainer.num_active.numpy()) == 3
  assert [h['step'] for h in resumed.history] == [6, 8, 12, 18]
  # Same data order, noise, optimizer state: the same parameters as without interruption.
  # Compare the uninterrupted run's in-memory state with the resumed run as read back
  # from its checkpoint by a fresh Trainer: this also proves every variable is saved.
  tr_resumed = trainer_lib.restore_for_evaluation(str(tmp_path / 'part'), which='latest',
                                                  make_networks=_tiny_networks, num_pixels=P)[1]
  fresh = trainer_lib.Trainer(cfg, str(tmp_path / 'fresh'), make_networks=_tiny_networks,
                              num_pixels=P)
  assert int(tr_resumed.step.numpy()) == 18
  for a, b, init, var in zip(_values(full.trainer), _values(tr_resumed), _values(fresh),
                             full.trainer.all_vars):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=var.path)
    if 'eps' not in var.path:  # every trained variable moved away from its initial value
      assert np.any(a != init), var.path
  # The selected model (best/, no optimizer in it) reads back complete too.
  tr_best = trainer_lib.restore_for_evaluation(str(tmp_path / 'full'), which='best',
                                               make_networks=_tiny_networks, num_pixels=P)[1]
  for a, b, var in zip(_values(full.trainer), _values(tr_best), full.trainer.all_vars):
    np.testing.assert_array_equal(a, b, err_msg=var.path)


def test_resume_of_a_finished_run_does_nothing_and_other_config_is_refused(tmp_path):
  cfg = _cfg(epochs=1)
  _train(cfg, tmp_path)
  again = _train(cfg, tmp_path)
  assert again.steps == 6
  with pytest.raises(errors.UserError, match='different config.*kl_weight'):
    _train(cfg.replace(kl_weight=0.5), tmp_path)


def test_step_is_traced_once_with_xla_across_stages(tmp_path):
  result = _train(_cfg(xla=True), tmp_path)
  assert result.trainer.trace_count == 1
  assert result.trainer.train_steps.experimental_get_tracing_count() == 1


def test_inactive_components_do_not_move_and_freeze_earlier_freezes(tmp_path):
  cfg = _cfg(schedule='freeze_earlier', eps_mode='global', warm_start=False)
  tr = _train(cfg, tmp_path / 'a', stop_after_steps=6).trainer  # stage 1 only
  fresh = trainer_lib.Trainer(cfg, str(tmp_path / 'b'), make_networks=_tiny_networks, num_pixels=P)
  for var, init in zip(tr.component_vars + tr.encoder.weight_variables,
                       fresh.component_vars + fresh.encoder.weight_variables):
    np.testing.assert_array_equal(var.numpy()[1:], init.numpy()[1:])  # components 2, 3 untouched
    assert np.any(var.numpy()[0] != init.numpy()[0]) or var.shape == (3,)
  stage1 = [v.numpy().copy() for v in tr.component_vars + tr.encoder.weight_variables]
  tr = _train(cfg, tmp_path / 'a', stop_after_steps=11).trainer  # into stage 2
  for var, old in zip(tr.component_vars + tr.encoder.weight_variables, stage1):
    np.testing.assert_array_equal(var.numpy()[0], old[0])  # frozen
  assert any(np.any(var.numpy()[1] != old[1]) for var, old in zip(tr.component_vars, stage1))


def test_warm_start_copies_the_newest_component(tmp_path):
  cfg = _cfg()
  tr = _train(cfg, tmp_path, stop_after_steps=6).trainer
  tr.activate(2)
  for var in tr.component_vars:
    np.testing.assert_array_equal(var.numpy()[1], var.numpy()[0])


@pytest.mark.parametrize('method', ['rme', 'boosted', 'mixture', 'iwae', 'vae'])
def test_each_loss_moves_exactly_its_own_variables(method, tmp_path):
  """rme/boosted: encoders by their component objectives, decoder and weights by the
  mixture bound; mixture: everything by the mixture bound; iwae: everything by IWAE;
  vae: encoder and decoder by the ELBO (with M = 1 both RME losses are the ELBO)."""
  m = 1 if method in ('iwae', 'vae') else 2
  s = 3 if method in ('iwae', 'vae') else 1  # vae: so its ELBO differs from IWAE's bound
  cfg = _cfg(method=method, num_components=m, schedule='simultaneous', num_train_samples=s)
  # Plain SGD makes each update exactly -lr * gradient.
  lr = 1e-2
  tr = _sgd_trainer(cfg, tmp_path, lr)
  x = tf.constant(np.random.default_rng(2).integers(0, 2, [BATCH, P]), tf.float32)
  noise = tr._noise(x)
  with tf.GradientTape(persistent=True) as tape:
    enc = tr.encoder(x)
    terms = objective.rme_terms(
        lambda z: tr.decoder.log_prob(x, z), enc.loc, enc.scale, enc.eps_logit, noise['z'],
        tf.constant(m), cfg.kl_weight, cfg.prior_floor,
        component_objective='entropy' if method == 'boosted' else 'kl',
        joint=method == 'mixture')
    comp = -tf.reduce_mean(tf.reduce_sum(terms.component_objective, -1))
    mix = -tf.reduce_mean(terms.mixture_elbo)
    iwae = -tf.reduce_mean(terms.iwae[:, 0])
  encoder_loss, decoder_loss = {'rme': (comp, mix), 'boosted': (comp, mix), 'vae': (comp, mix),
                                'mixture': (mix, mix), 'iwae': (iwae, iwae)}[method]
  before = _values(tr)
  tr._compiled_step(x, tf.constant(m), tf.constant(0), noise=noise)
  for var, old, g in zip(tr.all_vars, before, tape.gradient(encoder_loss, tr.component_vars) +
                         tape.gradient(decoder_loss, tr.mixture_vars)):
    g = np.zeros(var.shape) if g is None else g.numpy()  # a loss that does not reach var
    np.testing.assert_allclose((old - var.numpy()) / lr, g, rtol=2e-3, atol=2e-4,
                               err_msg=var.path)
  # The check can tell the losses apart: each alternative pulls differently.
  alternatives = (iwae,) if method == 'vae' else (comp, mix, iwae)  # vae: comp == mix
  for other in {id(l): l for l in alternatives}.values():
    if other is not encoder_loss:
      diff = [np.abs(a.numpy() - b.numpy()).max() for a, b in zip(
          tape.gradient(encoder_loss, tr.component_vars), tape.gradient(other, tr.component_vars))]
      assert max(diff) > 1e-3


class _PoisonDecoder(networks.BernoulliDecoder):
  poison = None  # a tf.Variable set by the test

  def call(self, z):
    logits = super().call(z)
    return tf.where(self.poison > 0, tf.fill(tf.shape(logits), np.nan), logits)


def _with_decoder(decoder_class):
  """A network factory with the tiny encoder and a decoder of decoder_class."""
  def make(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels):
    encoder, _ = _tiny_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels)
    decoder = decoder_class((8,), num_pixels, seed=seed, name='test_decoder')
    decoder.build((None, latent_dim))
    return encoder, decoder
  return make


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  _PoisonDecoder.poison = tf.Variable(0.0, trainable=False)
  make = _with_decoder(_PoisonDecoder)
  cfg = _cfg()
  loop_lib.train(cfg, str(tmp_path), load_data=_load_data, make_networks=make,
                 log=lambda s: None, stop_after_steps=6)
  _PoisonDecoder.poison.assign(1.0)
  with pytest.raises(errors.TrainingDiverged, match='non-finite.*ckpt-6'):
    loop_lib.train(cfg, str(tmp_path), load_data=_load_data, make_networks=make,
                   log=lambda s: None)
  ckpt_dir = str(tmp_path / runstate.CHECKPOINT_DIR)
  assert tf.train.latest_checkpoint(ckpt_dir).endswith('-6')
  for name, _ in tf.train.list_variables(ckpt_dir):
    if 'VARIABLE_VALUE' in name and ('encoder' in name or 'decoder' in name):
      assert np.all(np.isfinite(tf.train.load_variable(ckpt_dir, name))), name


class _NanGradientDecoder(networks.BernoulliDecoder):
  """Finite outputs, NaN gradients once `poison` > 0: the loss stays finite for a step."""
  poison = None

  def call(self, z):
    logits = super().call(z)

    @tf.custom_gradient
    def nan_gradient(t):
      return tf.identity(t), lambda g: tf.where(self.poison > 0, g * np.nan, g)

    return nan_gradient(logits)


def test_non_finite_parameters_under_a_finite_loss_are_caught_before_saving(tmp_path):
  _NanGradientDecoder.poison = tf.Variable(0.0, trainable=False)
  make = _with_decoder(_NanGradientDecoder)
  cfg = _cfg()
  loop_lib.train(cfg, str(tmp_path), load_data=_load_data, make_networks=make,
                 log=lambda s: None, stop_after_steps=6)
  _NanGradientDecoder.poison.assign(1.0)
  # One step: its metrics are computed before the update and stay finite.
  with pytest.raises(errors.TrainingDiverged, match='non-finite parameters.*ckpt-6'):
    loop_lib.train(cfg, str(tmp_path), load_data=_load_data, make_networks=make,
                   log=lambda s: None, stop_after_steps=7)
  assert tf.train.latest_checkpoint(str(tmp_path / runstate.CHECKPOINT_DIR)).endswith('-6')


def test_mixed_precision_trains_and_checkpoints_float32_variables(tmp_path):
  def make(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels,
           mixed_precision=False):
    del hidden_units
    return networks.build_networks(num_components, (8,), latent_dim, eps_mode, seed, num_pixels,
                                   mixed_precision=mixed_precision)

  result = loop_lib.train(_cfg(epochs=1, mixed_precision=True), str(tmp_path),
                          load_data=_load_data, make_networks=make, log=lambda s: None)
  assert result.trainer.encoder.trunk[0].compute_dtype == 'bfloat16'
  assert np.isfinite(result.history[-1]['train_mixture_elbo'])
  ckpt_dir = str(tmp_path / runstate.CHECKPOINT_DIR)
  dtypes = {tf.train.load_variable(ckpt_dir, name).dtype for name, _ in tf.train.list_variables(ckpt_dir)
            if 'VARIABLE_VALUE' in name and 'encoder' in name}
  assert dtypes == {np.dtype('float32')}


def test_unwritable_workdir_fails_fast(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(errors.UserError, match='not writable'):
    _train(_cfg(), blocker / 'run')


def _sgd_trainer(cfg, workdir, lr):
  """A Trainer whose optimizer is plain SGD (swapped in before the first trace)."""
  tr = trainer_lib.Trainer(cfg, str(workdir), make_networks=_smooth_networks, num_pixels=P)
  tr.optimizer = keras.optimizers.SGD(lr)
  tr.optimizer.build(tr.all_vars)
  return tr


def _refined_cfg(method, **kw):
  return _cfg(method=method, num_components=1, refine_steps=3, refine_step_size=0.1, **kw)


def test_savae_without_refinement_steps_takes_the_vae_step(tmp_path):
  x = tf.constant(np.random.default_rng(2).integers(0, 2, [BATCH, P]), tf.float32)
  after = {}
  for method in ('vae', 'savae'):
    cfg = _cfg(method=method, num_components=1, refine_steps=0)
    tr = trainer_lib.Trainer(cfg, str(tmp_path / method), make_networks=_tiny_networks,
                             num_pixels=P)
    assert hasattr(tr.method, 'refine') == (method == 'savae')
    tr._compiled_step(x, tf.constant(1), tf.constant(0), noise=tr._noise(x))  # Adam, as in training
    after[method] = _values(tr)
  for a, b in zip(after['vae'], after['savae']):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_refined_methods_route_their_gradients(tmp_path, monkeypatch):
  """vae_svi: encoder on the plain ELBO(q_0), decoder on ELBO(q_K) at the stopped refined
  posterior; savae: the same decoder update, the encoder on ELBO(q_K) through the steps."""
  # Gradient clipping is a threshold: an example whose norm is within rounding of it
  # can be clipped in one computation and not in the other. Routing is tested without it
  # (clipping itself: tests/test_refinement.py).
  monkeypatch.setattr(semi_amortized, 'REFINE_MAX_GRAD_NORM', 1e9)
  lr = 1e-2
  x = tf.constant(np.random.default_rng(2).integers(0, 2, [BATCH, P]), tf.float32)
  updates, expected = {}, {}
  for method in ('vae_svi', 'savae'):
    cfg = _refined_cfg(method)
    tr = _sgd_trainer(cfg, tmp_path / method, lr)
    noise = tr._noise(x)
    refine_noise = noise['refine']  # [K, S, B, D]
    assert noise['z'].shape == (1, BATCH, 1, 2) and refine_noise.shape == (3, 1, BATCH, 2)
    elbo = lambda loc, scale: objective.rme_terms(
        lambda z: tr.decoder.log_prob(x, z), loc, scale, enc.eps_logit, noise['z'], tf.constant(1),
        cfg.kl_weight, cfg.prior_floor).component_objective[:, 0]  # [B] ELBO of q(loc, scale)
    with tf.GradientTape(persistent=True) as tape:
      enc = tr.encoder(x)
      plain = -tf.reduce_mean(elbo(enc.loc, enc.scale))
      stopped = -tf.reduce_mean(elbo(*tr.method.refine(x, enc.loc, enc.scale, noise=refine_noise)))
      through = -tf.reduce_mean(elbo(*tr.method.refine(x, enc.loc, enc.scale, noise=refine_noise,
                                                       second_order=True)))
    encoder_loss = plain if method == 'vae_svi' else through
    grads = (tape.gradient(encoder_loss, tr.component_vars) +
             tape.gradient(stopped, tr.mixture_vars))
    expected[method] = [np.zeros(v.shape) if g is None else g.numpy()
                        for g, v in zip(grads, tr.all_vars)]
    before = _values(tr)
    tr._compiled_step(x, tf.constant(1), tf.constant(0), noise=noise)
    updates[method] = [(old - v.numpy()) / lr for old, v in zip(before, tr.all_vars)]
    for var, update, g in zip(tr.all_vars, updates[method], expected[method]):
      np.testing.assert_allclose(update, g, rtol=2e-3, atol=2e-4, err_msg=f'{method} {var.path}')
    # The refinement moved the posterior, so the plain and the refined ELBO differ.
    assert abs(float(plain) - float(stopped)) > 1e-3
  num_enc = len(tr.component_vars)
  # Same decoder update (the same stopped refined posterior) ...
  for a, b in zip(updates['savae'][num_enc:], updates['vae_svi'][num_enc:]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # ... but savae's encoder gradient flows through the refinement steps.
  diff = max(np.abs(a - b).max() for a, b in zip(updates['savae'][:num_enc],
                                                  updates['vae_svi'][:num_enc]))
  assert diff > 1e-3


@pytest.mark.parametrize('method', ['savae', 'vae_svi'])
def test_refined_methods_train_with_xla_and_trace_once(method, tmp_path):
  result = _train(_refined_cfg(method, epochs=2, xla=True), tmp_path)
  assert result.trainer.trace_count == 1
  assert result.trainer.train_steps.experimental_get_tracing_count() == 1
  assert all(np.isfinite(h['valid_mixture_elbo']) for h in result.history)


def test_identical_states_take_identical_steps(tmp_path):
  """No read of a variable may see the optimizer's write of the same step.

  Before the barrier in Trainer._apply, about 1 in 4 vae_svi steps read a
  half-updated encoder in the backward pass; eight tries catch that ~90% of the time.
  """
  x = tf.constant(np.random.default_rng(3).integers(0, 2, [BATCH, P]), tf.float32)
  updates = []
  for i in range(8):
    tr = _sgd_trainer(_refined_cfg('vae_svi'), tmp_path / str(i), 1e-2)
    before = _values(tr)
    tr._compiled_step(x, tf.constant(1), tf.constant(0), noise=tr._noise(x))
    updates.append([b - v.numpy() for b, v in zip(before, tr.all_vars)])
  for other in updates[1:]:
    for a, b in zip(updates[0], other):
      np.testing.assert_array_equal(a, b)


def test_validation_log_likelihood_is_recorded_without_changing_training(tmp_path):
  cfg = _cfg()
  plain = _train(cfg, tmp_path / 'plain')
  measured = _train(cfg.replace(valid_log_likelihood_every=2, valid_log_likelihood_examples=5,
                                valid_log_likelihood_samples=3), tmp_path / 'measured')
  # Epochs 2 and 3 (the last) carry an estimate; nothing else changes.
  lls = [h.get('valid_log_likelihood') for h in measured.history]
  assert lls[0] is None and all(np.isfinite(v) and v < 0 for v in lls[1:])
  seconds = [h['train_seconds'] for h in measured.history]
  assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(measured.train_seconds)
  for a, b in zip(_values(plain.trainer), _values(measured.trainer)):
    np.testing.assert_array_equal(a, b)
  strip = lambda h: {k: v for k, v in h.items()
                     if k not in ('epoch_seconds', 'train_seconds', 'valid_log_likelihood')}
  assert [strip(h) for h in plain.history] == [strip(h) for h in measured.history]
  # The estimate is the Evaluator's, on the first 5 validation images with K = 3.
  ev = likelihood.Evaluator(measured.trainer.method, xla=False)
  ds = data_lib.make_eval_dataset(measured.splits.valid[:5], batch_size=4, seed=cfg.seed + 3,
                                  binarization=cfg.binarization)
  want = likelihood.mean_log_likelihood(ev, ds, measured.trainer.num_active,
                                        num_samples=3, chunk=cfg.eval_chunk,
                                        seed=cfg.seed + 4).mean
  assert lls[-1] == pytest.approx(want, rel=1e-6)


def test_a_run_resumes_with_other_measurement_settings(tmp_path):
  cfg = _cfg()
  _train(cfg, tmp_path, stop_after_steps=6)
  resumed = _train(cfg.replace(valid_log_likelihood_every=1, valid_log_likelihood_examples=4),
                   tmp_path)
  assert resumed.steps == 18 and 'valid_log_likelihood' in resumed.history[-1]


@pytest.mark.parametrize('selection', ['elbo', 'log_likelihood'])
def test_best_is_the_epoch_with_the_highest_value_of_the_selection(selection, tmp_path):
  cfg = _cfg(epochs=5, valid_log_likelihood_every=1, valid_log_likelihood_examples=5,
             valid_log_likelihood_samples=3, selection=selection)
  result = _train(cfg, tmp_path)
  key = {'elbo': 'valid_mixture_elbo', 'log_likelihood': 'valid_log_likelihood'}[selection]
  values = [h[key] for h in result.history]
  assert len(values) == 5 and all(np.isfinite(values))
  best = int(np.argmax(values))
  assert result.trainer.best_step.numpy() == result.history[best]['step']
  assert result.trainer.best_validation.numpy() == values[best]
  # The run ends in the selected state (best/): its step and active components.
  assert int(result.trainer.step.numpy()) == result.history[best]['step']
  assert int(result.trainer.num_active.numpy()) == result.history[best]['num_active']


def test_a_run_selecting_on_log_likelihood_keeps_its_measurement_settings(tmp_path):
  cfg = _cfg(selection='log_likelihood', valid_log_likelihood_every=1,
             valid_log_likelihood_examples=5)
  _train(cfg, tmp_path, stop_after_steps=6)
  with pytest.raises(errors.UserError, match='valid_log_likelihood_examples'):
    _train(cfg.replace(valid_log_likelihood_examples=4), tmp_path)
  with pytest.raises(errors.UserError, match='selection'):
    _train(cfg.replace(selection='elbo'), tmp_path)


@pytest.mark.parametrize('variant', ['rme_iw', 'mixture_iw', 'rme_iw_to_encoders', 'iwae_dreg'])
def test_importance_weighted_variants_route_their_gradients(variant, tmp_path):
  """Each variable moves by exactly -lr * the gradient of the loss that trains it."""
  cfg = {'rme_iw': _cfg(num_train_samples=2, mixture_bound='iw'),
         'mixture_iw': _cfg(method='mixture', schedule='simultaneous', num_train_samples=2,
                            mixture_bound='iw'),
         'rme_iw_to_encoders': _cfg(num_train_samples=2, mixture_bound='iw',
                                    bound_to_encoders=True),
         'iwae_dreg': _cfg(method='iwae', num_components=1, num_train_samples=3, dreg=True),
         }[variant]
  m = cfg.num_components
  lr = 1e-2
  tr = _sgd_trainer(cfg, tmp_path, lr)
  x = tf.constant(np.random.default_rng(2).integers(0, 2, [BATCH, P]), tf.float32)
  noise = tr._noise(x)
  with tf.GradientTape(persistent=True) as tape:
    enc = tr.encoder(x)
    terms = objective.rme_terms(
        lambda z: tr.decoder.log_prob(x, z), enc.loc, enc.scale, enc.eps_logit, noise['z'],
        tf.constant(m), cfg.kl_weight, cfg.prior_floor,
        joint=variant in ('mixture_iw', 'rme_iw_to_encoders'), importance_weighted=True,
        dreg=True)
    comp = -tf.reduce_mean(tf.reduce_sum(terms.component_objective, -1))
    iw = -tf.reduce_mean(terms.mixture_iw)
    dreg = -tf.reduce_mean(terms.iwae_dreg[:, 0])
    iwae = -tf.reduce_mean(terms.iwae[:, 0])
    elbo = -tf.reduce_mean(terms.mixture_elbo)
    comp_and_iw = comp + iw
  encoder_loss, decoder_loss = {'rme_iw': (comp, iw), 'mixture_iw': (iw, iw),
                                'rme_iw_to_encoders': (comp_and_iw, iw),
                                'iwae_dreg': (dreg, iwae)}[variant]
  before = _values(tr)
  tr._compiled_step(x, tf.constant(m), tf.constant(0), noise=noise)
  grads = tape.gradient(encoder_loss, tr.component_vars) + tape.gradient(decoder_loss,
                                                                         tr.mixture_vars)
  for var, old, g in zip(tr.all_vars, before, grads):
    g = np.zeros(var.shape) if g is None else g.numpy()
    np.testing.assert_allclose((old - var.numpy()) / lr, g, rtol=2e-3, atol=2e-4,
                               err_msg=f'{variant} {var.path}')
  # The check tells the bounds apart: the ELBO would move the decoder differently.
  other = iwae if variant == 'iwae_dreg' else elbo
  alternative = dreg if variant == 'iwae_dreg' else comp
  diff = [np.abs(a.numpy() - b.numpy()).max() for a, b in zip(
      tape.gradient(decoder_loss, tr.decoder.trainable_variables),
      tape.gradient(elbo, tr.decoder.trainable_variables))]
  assert max(diff) > 1e-4 or variant == 'iwae_dreg'
  if variant == 'iwae_dreg':  # DReG's encoder gradient is not the IWAE bound's own
    diff = [np.abs(a.numpy() - b.numpy()).max() for a, b in zip(
        tape.gradient(alternative, tr.component_vars), tape.gradient(other, tr.component_vars))]
    assert max(diff) > 1e-4
