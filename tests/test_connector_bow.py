"""Bag-of-words terms on connector outputs (omnijax.training.connector_bow) against PyTorch's logsumexp
and binary cross-entropy, through the objective (with and without the next-token loss), and their config
errors."""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
import torch
from test_connector_ctc import ASR, COLS, L, ROWS, _answer, _examples, _inputs
from test_omni import OLA, pack, random_params

from omnijax.models.omni import OmniModel
from data_pipelines import tokenizer
from omnijax.training import objective
from omnijax.training.connector_bow import ConnectorBagOfWords, bow_sums
from omnijax.training.next_token import NextTokenCE
from omnijax.training.omni_task import objective_terms
from omnijax.training.stages import StageConfigError


def _torch_bow(logits, frames, text, vocab):
    """An item's loss: BCE-with-logits of its frames' log-mean-exp scores against its text's token set."""
    scores = torch.logsumexp(torch.from_numpy(np.asarray(logits)[frames]), dim=0) - np.log(len(frames))
    bag = torch.zeros(vocab)
    bag[sorted(set(text))] = 1.0
    return float(torch.nn.functional.binary_cross_entropy_with_logits(scores, bag, reduction="sum"))


@pytest.mark.parametrize("max_label_tokens", [48, 3])
def test_audio_bow_matches_torch(max_label_tokens):
    rows, batch, features, embedding = _inputs("audio")
    cfg = ConnectorBagOfWords("audio", weight=1.0, tasks=("asr",), max_label_tokens=max_label_tokens)
    out = jax.jit(lambda f, e, b: bow_sums(f, e, b, OLA.media_layout, cfg, (ASR,)))(features, embedding, batch)
    logits = features @ embedding.T
    (a, _), _ = rows[0]
    (c, _), = rows[1]
    # row 0's ASR clip spans audio slots 0-1 (both windows pooled), row 1's fills slot 0; texts: the answers
    # less their turn end, cut to max_label_tokens
    v = OLA.llm.vocab_size
    expected = (_torch_bow(logits[0], np.arange(0, 2 * L), _answer(a)[:-1][:max_label_tokens], v)
                + _torch_bow(logits[1], np.arange(0, L), _answer(c)[:-1][:max_label_tokens], v))
    np.testing.assert_allclose(float(out["sum"]), expected, rtol=1e-5)
    assert float(out["items"]) == 2


def test_image_bow_matches_torch():
    rows, batch, features, embedding = _inputs("image")
    cfg = ConnectorBagOfWords("image", weight=1.0, tasks=("asr",))
    out = jax.jit(lambda f, e, b: bow_sums(f, e, b, OLA.media_layout, cfg, (ASR,)))(features, embedding, batch)
    (c, _), = rows[1]  # only row 1's image belongs to an example of the task: slot 0's frames
    expected = _torch_bow((features @ embedding.T)[1], np.arange(ROWS * COLS), _answer(c)[:-1], OLA.llm.vocab_size)
    np.testing.assert_allclose(float(out["sum"]), expected, rtol=1e-5)
    assert float(out["items"]) == 1


def _torch_pairs(logits, frames, text, attrs, objs):
    """An item's binding loss: BCE-with-logits of each (attribute, object) pair's score -- the log-mean-exp
    over frames of the two tokens' logits summed on one frame -- against "the text has a directly before o"."""
    lg = torch.from_numpy(np.asarray(logits)[frames])
    said = {(x, y) for x, y in zip(text, text[1:])}
    total = 0.0
    for a in attrs:
        for o in objs:
            score = torch.logsumexp(lg[:, a] + lg[:, o], dim=0) - np.log(len(frames))
            label = torch.tensor(float((a, o) in said))
            total += float(torch.nn.functional.binary_cross_entropy_with_logits(score, label, reduction="sum"))
    return total


def test_image_bow_binding_pairs_match_torch():
    rows, batch, features, embedding = _inputs("image")
    (c, _), = rows[1]
    text = _answer(c)[:-1]
    unused = [t for t in range(10, OLA.llm.vocab_size) if t not in text][:2]
    attrs, objs = (text[0], text[2], unused[0]), (text[1], text[3], unused[1])  # "t0 t1" and "t2 t3" are said
    cfg = ConnectorBagOfWords("image", weight=1.0, tasks=("asr",), pairs=(("x",), ("y",)), pair_weight=0.5,
                       pair_ids=(attrs, objs))
    out = jax.jit(lambda f, e, b: bow_sums(f, e, b, OLA.media_layout, cfg, (ASR,)))(features, embedding, batch)
    logits, frames = (features @ embedding.T)[1], np.arange(ROWS * COLS)
    pairs = _torch_pairs(logits, frames, text, attrs, objs)
    np.testing.assert_allclose(float(out["pair_sum"]), pairs, rtol=1e-5)
    np.testing.assert_allclose(float(out["sum"]), _torch_bow(logits, frames, text, OLA.llm.vocab_size) + 0.5 * pairs,
                               rtol=1e-5)
    value = cfg.value(out)
    assert float(value.means["bow/image/pairs"]) == pytest.approx(pairs, rel=1e-5)
    assert float(value.means["bow/image/loss"]) == pytest.approx(float(out["sum"]), rel=1e-6)  # one item
    unresolved = ConnectorBagOfWords("image", weight=1.0, tasks=("asr",), pairs=(("x",), ("y",)))
    with pytest.raises(ValueError, match=r"have no token ids; bind the term to its stage"):
        bow_sums(features, embedding, batch, OLA.media_layout, unresolved, (ASR,))


def test_loss_fn_with_bow_terms_and_without_the_next_token_loss():
    model = OmniModel(OLA)
    params = random_params(model)
    batch = {k: jnp.asarray(v) for k, v in pack(_examples(), OLA).items()}
    terms = (ConnectorBagOfWords("audio", weight=0.3, tasks=("asr",), task_ids=(ASR,)),
             ConnectorBagOfWords("image", weight=0.5, tasks=("asr",), task_ids=(ASR,)))

    def alone_loss(p):  # the terms without the next-token loss, the other losses and the audio connector's outputs
        plain, _ = objective.loss_fn(model, p, batch, num_tasks=2)
        with_bow, aux = objective.loss_fn(model, p, batch, (NextTokenCE(), *terms), num_tasks=2)
        alone, aux_alone = objective.loss_fn(model, p, batch, terms, num_tasks=2)
        audio = model.apply({"params": p}, batch["audio"], batch["audio_valid_frames"], method="encode_audio")
        return alone, (plain, with_bow, aux, aux_alone, audio)

    (alone, (plain, with_bow, aux, aux_alone, audio)), grads = jax.jit(
        jax.value_and_grad(alone_loss, has_aux=True))(params)
    direct = jax.jit(lambda a, e: bow_sums(a, e, batch, OLA.media_layout, terms[0], (ASR,)))(
        audio, params["llm"]["embed_tokens"]["embedding"])
    means = aux["means"]
    np.testing.assert_allclose(float(means["bow/audio/loss"]), float(direct["sum"] / direct["items"]), rtol=1e-5)
    terms_sum = 0.3 * float(means["bow/audio/loss"]) + 0.5 * float(means["bow/image/loss"])
    np.testing.assert_allclose(float(with_bow), float(plain) + terms_sum, rtol=1e-5)
    np.testing.assert_allclose(float(alone), terms_sum, rtol=1e-5)
    assert "tokens" not in aux_alone and float(aux_alone["counts"]["bow/image/items"]) == 1
    # without the next-token loss only the towers, connectors and token embeddings get gradients
    assert float(jnp.abs(grads["vision"]["embeddings"]["patch_embedding"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["audio"]["conv1"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["llm"]["embed_tokens"]["embedding"]).max()) > 0
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["llm"]["layers"]))


def _stage(**terms):
    return mlc.ConfigDict({"name": "s", "task_names": ("asr", "text_instruct"), "model": {}, "objective": terms})


def test_bow_config_and_its_errors():
    (term,) = objective_terms(_stage(bow_audio=dict(weight=0.2, tasks=("text_instruct",))), OLA)
    assert term == ConnectorBagOfWords("audio", weight=0.2, tasks=("text_instruct",), task_ids=(1,))
    with pytest.raises(StageConfigError, match=r"bow_image: tasks \['image_caption'\] are not among"):
        objective_terms(_stage(bow_image=dict(tasks=("image_caption",))), OLA)
    with pytest.raises(StageConfigError, match="bow_image: weight is -1.0; it must be a positive number"):
        objective_terms(_stage(bow_image=dict(weight=-1.0, tasks=("asr",))), OLA)
    with pytest.raises(StageConfigError, match=r"c.objective lists no term, which leaves nothing to train on"):
        objective_terms(_stage(next_token=None), OLA)
    with pytest.raises(StageConfigError, match=r"c.objective.self_kd needs the next_token term"):
        objective_terms(_stage(self_kd=dict(alpha=0.5), bow_audio=dict(tasks=("asr",))), OLA)
    (term,) = objective_terms(_stage(next_token=None, bow_audio=dict(tasks=("asr",))), OLA)
    assert term.name == "bow_audio" and term.needs == ("audio_features",)


def test_bow_pair_words_become_token_ids_through_the_stage_tokenizer(tmp_path):
    texts = ["a red circle and a blue square", "a blue circle, a red triangle and a green square"] * 20
    tok = tokenizer.train_synth_tokenizer(texts, str(tmp_path), vocab_size=400)
    pairs = dict(tasks=("asr",), pairs=(("red", "blue"), ("circle", "square")))
    stage = _stage(bow_image=pairs)
    stage.data = {"tokenizer": str(tmp_path)}
    (term,) = objective_terms(stage, OLA)
    ids = lambda w: tok.encode(" " + w, add_special_tokens=False)
    assert term.pair_ids == ((*ids("red"), *ids("blue")), (*ids("circle"), *ids("square")))
    assert len(set(term.pair_ids[0] + term.pair_ids[1])) == 4
    with pytest.raises(StageConfigError, match=r"pairs: 'xylophone' is \d+ tokens in the stage's tokenizer, not one"):
        stage.objective.bow_image.pairs = (("red",), ("xylophone",))
        objective_terms(stage, OLA)
    with pytest.raises(StageConfigError, match=r"pairs names words, which need the stage's tokenizer"):
        objective_terms(_stage(bow_image=pairs), OLA)
    with pytest.raises(StageConfigError, match=r"give two non-empty word lists"):
        objective_terms(_stage(bow_image=dict(tasks=("asr",), pairs=(("red",),))), OLA)
