"""The objective as a list of terms (omnijax.training.objective): the next-token term against the masked
cross-entropy of the model's logits, how terms' means and weights combine, the stage config's terms and
their errors, and the train step's metrics of the terms (microbatches add counts up and average means)."""

import json

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest
from test_connector_ctc import _examples
from test_omni import OLA, pack, random_params

from omnijax.models.omni import OmniModel
from omnijax.training import objective
from omnijax.training.config import base_config, check_config
from omnijax.training.connector_ctc import ConnectorCTC
from omnijax.training.losses import masked_cross_entropy
from omnijax.training.next_token import NextTokenCE, SelfKD
from omnijax.training.stages import StageConfigError
from omnijax.training.step import TrainState, make_train_step
from omnijax.training.term import TermValue


def test_next_token_term_is_the_masked_cross_entropy_of_the_logits():
    model = OmniModel(OLA)
    params = random_params(model)
    batch = {k: jnp.asarray(v) for k, v in pack(_examples(), OLA).items()}
    loss, aux = jax.jit(lambda p: objective.loss_fn(model, p, batch, num_tasks=2))(params)
    logits = jax.jit(lambda p: model.apply({"params": p}, batch))(params)
    want, want_aux = masked_cross_entropy(logits, batch["targets"], batch["loss_weights"], batch["task_ids"], 2)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(aux["task_loss"]), np.asarray(want_aux["task_loss"]), rtol=1e-6)
    assert float(aux["tokens"]) == float(want_aux["tokens"]) == float(jnp.sum(batch["loss_weights"]))
    assert aux["means"] == {} and aux["counts"] == {}
    doubled, _ = jax.jit(lambda p: objective.loss_fn(model, p, batch, (NextTokenCE(weight=2.0),), num_tasks=2))(params)
    np.testing.assert_allclose(float(doubled), 2 * float(loss), rtol=1e-6)


def test_terms_of_a_pool_share_one_mean_and_pools_add_up_with_their_weights():
    """Self-KD's sums join the next-token term's token mean; a connector term adds its weight times its own mean."""
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    terms = (NextTokenCE(weight=2.0), SelfKD(), ConnectorCTC("audio", weight=0.25, tasks=("asr",)))
    values = (TermValue(f(6.0), f(4.0), task_sums=(f([6.0, 0.0]), f([4.0, 0.0]))),
              TermValue(f(3.0), f(2.0), means={"kd/kl": f(0.5)}, counts={"kd/tokens": f(2.0)},
                        task_sums=(f([1.0, 2.0]), f([1.0, 1.0]))),
              TermValue(f(10.0), f(5.0), means={"ctc/audio/loss": f(2.0)}))
    loss, aux = objective.combine(terms, values)
    assert float(loss) == 2.0 * (6 + 3) / (4 + 2) + 0.25 * 10 / 5
    assert (float(aux["loss_sum"]), float(aux["tokens"])) == (9.0, 6.0)
    np.testing.assert_array_equal(aux["task_loss"], np.asarray([7 / 5, 2 / 1], np.float32))
    assert set(aux["means"]) == {"kd/kl", "ctc/audio/loss"} and set(aux["counts"]) == {"kd/tokens"}
    with pytest.raises(ValueError, match="shares the mean of the next_token term, which is not in the objective"):
        objective.combine(terms[1:], values[1:])
    loss, aux = objective.combine((), ())
    assert float(loss) == 0.0 and "tokens" not in aux


def test_stage_config_lists_terms_by_name():
    c = base_config()
    assert [t.name for t in objective.terms_from_config(c.objective)] == ["next_token"]
    c.objective.bow_image = dict(weight=1.0, tasks=("image_caption",))
    c.objective.self_kd = dict(alpha=0.0)
    c.objective.ctc_audio = None  # not in the objective
    terms = objective.terms_from_config(c.objective)
    assert [t.name for t in terms] == ["next_token", "self_kd", "bow_image"]  # TERMS' order, not the config's
    assert terms[1] == SelfKD(alpha=0.0) and terms[2].weight == 1.0 and terms[2].modality == "image"
    c.objective = dict(ctc_image=dict(weight=0.5, tasks=("image_caption",)))  # a stage of one connector term
    (term,) = objective.terms_from_config(c.objective)
    assert term.needs == ("image_features",) and term.pool == "ctc_image"


@pytest.mark.parametrize("objective_, message", [
    (dict(next_token={}, ctc=dict(tasks=("asr",))),
     r"c.objective names unknown terms \['ctc'\]; the terms are next_token, self_kd, ctc_audio, ctc_image, "
     r"bow_audio, bow_image"),
    (dict(next_token=dict(weight=0)), r"c.objective.next_token: weight is 0; it must be a positive number"),
    (dict(next_token=dict(weight="1")), r"c.objective.next_token: weight is '1'; it must be a positive number"),
    (dict(next_token=dict(weight=True)), r"c.objective.next_token: weight is True; it must be a positive number"),
    (dict(next_token=dict(weight=float("nan"))), r"c.objective.next_token: weight is nan; it must be a positive"),
    (dict(next_token={}, bow_audio=dict(weight=-2.0, tasks=("asr",))), r"c.objective.bow_audio: weight is -2.0"),
    (dict(next_token=dict(wieght=2.0)), r"c.objective.next_token has no setting \['wieght'\]; its settings are "
                                         r"weight, vocab_parallel"),
    (dict(next_token=1.0), r"c.objective.next_token is 1.0; give a dict of its settings \(weight, vocab_parallel\)"),
    (dict(self_kd=dict(alpha=0.5)), r"c.objective.self_kd needs the next_token term, whose mean it shares"),
    (dict(next_token=None), r"c.objective lists no term, which leaves nothing to train on"),
    (dict(next_token={}, ctc_audio=dict(modality="image", tasks=("asr",))),
     r"c.objective.ctc_audio has no setting \['modality'\]"),
])
def test_objective_config_errors_name_the_term_and_the_fix(objective_, message):
    c = base_config()
    c.name = "s"
    c.objective = objective_
    with pytest.raises(StageConfigError, match=r"stage 's': " + message):
        check_config(c, 8)


def test_train_step_logs_the_terms_metrics_and_adds_counts_up_over_microbatches():
    """Two microbatches of 1 and 3 loss tokens: a count is their sum, a mean their token-weighted mean."""
    def loss_fn(params, batch, rng):
        del rng
        tokens = jnp.sum(batch["loss_weights"])
        loss = params["w"] * tokens
        return loss, {"means": {"x/mean": tokens * 10.0}, "counts": {"x/items": tokens + 1.0}}

    weights = jnp.asarray([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])  # rows 0, 2 | rows 1, 3
    batch = {"input_ids": jnp.zeros((4, 2), jnp.int32), "segment_ids": jnp.ones((4, 2), jnp.int32),
             "loss_weights": weights}
    params = {"w": jnp.asarray(1.0)}
    tx = optax.sgd(0.1)
    state = TrainState(step=jnp.asarray(0), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)), nonfinite=jnp.asarray(0), skipped=jnp.asarray(0))
    _, one = jax.jit(make_train_step(loss_fn, tx, {"w": "all"}, {}))(state, batch)
    _, two = jax.jit(make_train_step(loss_fn, tx, {"w": "all"}, {}, microbatches=2))(state, batch)
    assert (float(one["x/mean"]), float(one["x/items"])) == (40.0, 5.0)
    assert float(two["x/items"]) == (1 + 1) + (3 + 1)
    np.testing.assert_allclose(float(two["x/mean"]), 0.25 * 10 + 0.75 * 30, rtol=1e-6)


def test_the_objective_reads_the_same_from_a_stage_json():
    """The trainer stores the config as JSON (``stage.json``): tuples come back as lists."""
    c = base_config()
    c.objective.bow_image = dict(tasks=("image_caption",), pairs=(("red",), ("circle",)))
    again = mlc.ConfigDict(json.loads(c.to_json()))
    assert isinstance(again.objective.bow_image.tasks, list)
    assert objective.terms_from_config(again.objective) == objective.terms_from_config(c.objective)
