"""Config validation and JSON round trip."""
import pytest

from rec_vae_tf import config as config_lib
from rec_vae_tf import methods
from rec_vae_tf import errors


def test_default_is_valid_and_round_trips(tmp_path):
  cfg = config_lib.Config().validate()
  path = str(tmp_path / 'config.json')
  cfg.save(path)
  assert config_lib.Config.load(path) == cfg


@pytest.mark.parametrize('field,value,needle', [
    ('num_components', 0, 'num_components=0'),
    ('kl_weight', 1.5, 'kl_weight=1.5'),
    ('kl_weight', 1.0, '[0.0, 1.0)'),
    ('prior_floor', -0.1, 'prior_floor'),
    ('eps_mode', 'learned', 'amortized, global, fixed'),
    ('schedule', 'greedy', 'recursive, freeze_earlier, simultaneous'),
    ('epochs', 0, 'epochs=0'),
    ('batch_size', 2.5, 'batch_size'),
    ('method', 'flow', 'rme, vae, boosted, mixture, iwae'),
    ('epochs_per_component', 0.0, 'epochs_per_component'),
    ('learning_rate', float('nan'), 'learning_rate'),
    ('xla', 'yes', 'true or false'),
    ('mixed_precision', 1, 'mixed_precision=1; allowed: true or false'),
    ('refine_steps', -1, 'refine_steps=-1; allowed: an integer >= 0'),
    ('refine_steps', 2.0, 'refine_steps'),
    ('refine_step_size', 0.0, 'refine_step_size=0.0; allowed: a number in (0, 100]'),
    ('refine_momentum', 1.0, 'refine_momentum=1.0; allowed: a number in [0.0, 1.0)'),
])
def test_invalid_fields_are_named_with_what_is_allowed(field, value, needle):
  with pytest.raises(errors.ConfigError) as e:
    config_lib.Config(**{field: value}).validate()
  message = str(e.value)
  assert needle in message and '\n' not in message


def test_a_config_written_before_mixed_precision_existed_loads_with_it_off(tmp_path):
  values = config_lib.Config().to_dict()
  del values['mixed_precision']
  assert config_lib.Config.from_dict(values).validate().mixed_precision is False


def test_vae_has_one_component():
  assert config_lib.default_config('vae').validate().num_components == 1
  with pytest.raises(errors.ConfigError, match='method=vae'):
    config_lib.Config(method='vae', num_components=3).validate()


def test_unknown_fields_and_missing_file(tmp_path):
  with pytest.raises(errors.ConfigError, match='unknown'):
    config_lib.Config.from_dict({'num_components': 2, 'colour': 'red'})
  with pytest.raises(errors.UserError, match='no config'):
    config_lib.Config.load(str(tmp_path / 'nope.json'))


def test_activation_schedule():
  cfg = config_lib.Config(num_components=4, epochs_per_component=2.5)
  assert cfg.last_activation_epoch() == 7.5
  assert cfg.replace(schedule='simultaneous').last_activation_epoch() == 0.0


def test_method_constraints():
  assert config_lib.default_config('iwae').validate().num_components == 1
  assert config_lib.default_config('mixture').validate().schedule == 'simultaneous'
  with pytest.raises(errors.ConfigError, match='schedule.*simultaneous'):
    config_lib.Config(method='mixture').validate()
  with pytest.raises(errors.ConfigError, match='method=iwae'):
    config_lib.Config(method='iwae', num_components=2).validate()


def test_semi_amortized_methods_have_one_encoder():
  for method in ('savae', 'vae_svi'):
    cfg = config_lib.default_config(method).validate()
    assert cfg.num_components == 1 and cfg.refine_steps == 20
    with pytest.raises(errors.ConfigError, match=f'method={method}'):
      config_lib.Config(method=method, num_components=2).validate()
  assert {m for m in config_lib.METHODS
          if methods.method_class(m).batch_coupled_posterior} == {'savae', 'vae_svi'}


def test_method_options_are_refused_where_the_method_does_not_take_them():
  assert config_lib.Config(mixture_bound='iw').validate().mixture_bound == 'iw'
  assert config_lib.default_config('mixture', mixture_bound='iw').validate()
  assert config_lib.default_config('iwae', dreg=True).validate().dreg
  assert config_lib.Config(bound_to_encoders=True).validate().bound_to_encoders
  for method, field, value in (('savae', 'mixture_bound', 'iw'), ('iaf', 'mixture_bound', 'iw'),
                               ('rme', 'dreg', True), ('mixture', 'bound_to_encoders', True),
                               ('iwae', 'mixture_bound', 'iw')):
    with pytest.raises(errors.ConfigError, match=f'{field}=.*method={method}'):
      config_lib.default_config(method, **{field: value}).validate()
  with pytest.raises(errors.ConfigError, match='mixture_bound'):
    config_lib.Config(mixture_bound='iwae').validate()
  # At their defaults the new fields stay out of config.json (old runs keep their keys).
  assert not {'mixture_bound', 'bound_to_encoders', 'dreg'} & set(config_lib.Config().to_dict())


def test_a_config_written_before_refinement_existed_loads_with_the_defaults():
  values = config_lib.Config().to_dict()
  for field in ('refine_steps', 'refine_step_size', 'refine_momentum'):
    del values[field]
  assert config_lib.Config.from_dict(values).validate() == config_lib.Config()


def test_selection_on_log_likelihood_needs_the_measurement():
  cfg = config_lib.Config(selection='log_likelihood', valid_log_likelihood_every=2).validate()
  assert cfg.to_dict()['selection'] == 'log_likelihood'
  with pytest.raises(errors.ConfigError,
                     match=r"selection='log_likelihood'.*valid_log_likelihood_every=0"):
    config_lib.Config(selection='log_likelihood').validate()
  with pytest.raises(errors.ConfigError, match='selection=.*one of elbo, log_likelihood'):
    config_lib.Config(selection='iw').validate()
  # At its default it stays out of config.json: every stored run keeps its key.
  assert 'selection' not in config_lib.Config().to_dict()
