"""CTC terms on connector outputs (omnijax.training.connector_ctc) against PyTorch's CTC loss, through the
objective, and their config errors."""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
import torch
from test_omni import AUDIO, IMAGE, OLA, example, pack, random_params

from omnijax.models.omni import OmniModel
from omnijax.training import objective
from omnijax.training.connector_ctc import ConnectorCTC, ctc_sums
from omnijax.training.next_token import NextTokenCE
from omnijax.training.omni_task import objective_terms
from omnijax.training.stages import StageConfigError

ASR, OTHER = 0, 1  # task ids
L = OLA.audio_chunk_tokens  # connector frames per audio window
ROWS, COLS = OLA.image_grid  # connector frames per image view


def _examples():
    """Row 0: an ASR example with a 2-window clip, then another task's example with a 1-window clip and an
    image; row 1: an ASR-task example with an image and a 1-window clip. Answers: 6, 4 and 5 tokens (the
    last is the turn end)."""
    lay = OLA.media_layout
    a = example([("text", 3), ("audio", 2), ("text", 2), ("answer", 6)], lay, seed=1)
    b = example([("image", 1), ("audio", 1), ("answer", 4)], lay, seed=2)
    c = example([("text", 2), ("image", 1), ("audio", 1), ("answer", 5)], lay, seed=3)
    return [[(a, ASR), (b, OTHER)], [(c, ASR)]]


def _inputs(modality):
    """``_examples`` packed, with random connector outputs for ``modality``'s slots (2 rows, width 48) and
    a random embedding table."""
    rows = _examples()
    batch = {k: jnp.asarray(v) for k, v in pack(rows, OLA).items()}
    frames, seed = (OLA.audio_slots * L, 0) if modality == "audio" else (OLA.image_slots * ROWS * COLS, 2)
    return rows, batch, _random((2, frames, 48), seed), _random((OLA.llm.vocab_size, 48), seed + 1, 0.3)


def _answer(ex):
    ids, mask, _ = ex
    return [t for t, m in zip(ids, mask) if m]


def _torch_ctc(logprobs, frames, labels, blank):
    lp = torch.from_numpy(np.asarray(logprobs)[frames])[:, None]  # [T, 1, V]
    return float(torch.nn.functional.ctc_loss(lp, torch.tensor([labels]), torch.tensor([len(frames)]),
                                              torch.tensor([len(labels)]), blank=blank, reduction="sum"))


def _random(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


@pytest.mark.parametrize("max_label_tokens,max_slots", [(48, 2), (4, 2), (48, 1)])
def test_audio_ctc_matches_torch(max_label_tokens, max_slots):
    rows, batch, features, embedding = _inputs("audio")
    cfg = ConnectorCTC("audio", weight=1.0, tasks=("asr",), max_label_tokens=max_label_tokens, max_slots=max_slots)
    out = jax.jit(lambda f, e, b: ctc_sums(f, e, b, OLA.media_layout, cfg, (ASR,)))(features, embedding, batch)
    logprobs = torch.log_softmax(torch.from_numpy(features @ embedding.T), -1).numpy()
    (a, _), _ = rows[0]
    (c, _), = rows[1]
    # row 0's ASR clip owns audio slots 0-1, row 1's slot 0; transcripts: the answers less their last token
    items = [(logprobs[0], np.arange(0, 2 * L), _answer(a)[:-1]), (logprobs[1], np.arange(0, L), _answer(c)[:-1])]
    kept = [(lp, f, y) for lp, f, y in items if len(y) <= max_label_tokens and len(f) <= max_slots * L]
    assert len(kept) == (2 if (max_label_tokens, max_slots) == (48, 2) else 1)
    np.testing.assert_allclose(float(out["sum"]), sum(_torch_ctc(lp, f, y, AUDIO) for lp, f, y in kept), rtol=1e-5)
    assert float(out["tokens"]) == sum(len(y) for _, _, y in kept)
    assert (float(out["items"]), float(out["dropped"])) == (len(kept), 2 - len(kept))


def test_image_ctc_reads_columns_left_to_right_and_matches_torch():
    rows, batch, features, embedding = _inputs("image")
    cfg = ConnectorCTC("image", weight=1.0, tasks=("asr",))
    out = jax.jit(lambda f, e, b: ctc_sums(f, e, b, OLA.media_layout, cfg, (ASR,), OLA.image_grid))(
        features, embedding, batch)
    # only row 1's image belongs to an example of the task; its frames: slot 0, raster (r, c) -> column order
    logprobs = torch.log_softmax(torch.from_numpy(features @ embedding.T), -1).numpy()
    column_major = [r * COLS + c for c in range(COLS) for r in range(ROWS)]
    (c, _), = rows[1]
    expected = _torch_ctc(logprobs[1], np.asarray(column_major), _answer(c)[:-1], IMAGE)
    np.testing.assert_allclose(float(out["sum"]), expected, rtol=1e-5)
    assert (float(out["items"]), float(out["dropped"]), float(out["tokens"])) == (1, 0, 4)


def test_loss_fn_adds_the_weighted_ctc_of_the_connector_outputs():
    model = OmniModel(OLA)
    params = random_params(model)
    batch = {k: jnp.asarray(v) for k, v in pack(_examples(), OLA).items()}
    terms = (ConnectorCTC("audio", weight=0.3, tasks=("asr",), max_slots=2, task_ids=(ASR,)),
             ConnectorCTC("image", weight=0.5, tasks=("asr",), task_ids=(ASR,)))

    def difference(p):  # what the terms add, with the losses and the audio connector's outputs on the side
        plain, _ = objective.loss_fn(model, p, batch, num_tasks=2)
        with_ctc, aux = objective.loss_fn(model, p, batch, (NextTokenCE(), *terms), num_tasks=2)
        audio = model.apply({"params": p}, batch["audio"], batch["audio_valid_frames"], method="encode_audio")
        return with_ctc - plain, (plain, with_ctc, aux, audio)

    (_, (plain, with_ctc, aux, audio)), grads = jax.jit(jax.value_and_grad(difference, has_aux=True))(params)
    direct = jax.jit(lambda a, e: ctc_sums(a, e, batch, OLA.media_layout, terms[0], (ASR,)))(
        audio, params["llm"]["embed_tokens"]["embedding"])
    means, counts = aux["means"], aux["counts"]
    np.testing.assert_allclose(float(means["ctc/audio/loss"]), float(direct["sum"] / direct["tokens"]), rtol=1e-5)
    assert float(counts["ctc/audio/tokens"]) == float(direct["tokens"]) and float(counts["ctc/image/items"]) == 1
    np.testing.assert_allclose(float(with_ctc), float(plain) + 0.3 * float(means["ctc/audio/loss"])
                               + 0.5 * float(means["ctc/image/loss"]), rtol=1e-5)
    # the terms train the towers through their connectors
    assert float(jnp.abs(grads["audio"]["conv1"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["vision"]["embeddings"]["patch_embedding"]["kernel"]).max()) > 0


def _stage(**terms):
    return mlc.ConfigDict({"name": "s", "task_names": ("asr", "text_instruct"), "model": {}, "objective": terms})


def test_ctc_config_and_its_errors():
    (term,) = objective_terms(_stage(ctc_audio=dict(weight=0.2, tasks=("asr",))), OLA)
    assert term == ConnectorCTC("audio", weight=0.2, tasks=("asr",), task_ids=(0,))
    with pytest.raises(StageConfigError, match=r"ctc_audio: tasks \['video_audio_qa'\] are not among"):
        objective_terms(_stage(ctc_audio=dict(tasks=("video_audio_qa",))), OLA)
    with pytest.raises(StageConfigError, match="ctc_image: weight is 0.0; it must be a positive number"):
        objective_terms(_stage(ctc_image=dict(weight=0.0, tasks=("asr",))), OLA)
    with pytest.raises(StageConfigError, match=r"unknown terms \['ctc_video'\]; the terms are next_token, self_kd, "
                                               r"ctc_audio, ctc_image, bow_audio, bow_image"):
        objective_terms(_stage(ctc_video=dict(tasks=("asr",))), OLA)
    with pytest.raises(StageConfigError, match="ctc_audio: it needs the model's audio tower"):
        objective_terms(_stage(ctc_audio=dict(tasks=("asr",))), OLA.replace(audio=None, audio_connector=None,
                                                                             audio_token_id=None, audio_slots=0))
