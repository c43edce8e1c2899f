import jax.numpy as jnp
import numpy as np
import torch

from omnijax.models.splice import merge_embeddings


def test_merge_equals_masked_scatter():
    rng = np.random.RandomState(0)
    text = rng.randn(2, 10, 4).astype(np.float32)
    mask = np.zeros((2, 10), bool)
    mask[0, [1, 2, 6]] = True
    mask[1, [0, 9]] = True
    media = rng.randn(2, 3, 4).astype(np.float32)
    got = np.asarray(merge_embeddings(jnp.asarray(text), jnp.asarray(media), jnp.asarray(mask)))
    flat = np.concatenate([media[0, :3], media[1, :2]])  # transformers scatters in row-major order
    want = torch.tensor(text).masked_scatter(torch.tensor(mask)[..., None], torch.tensor(flat)).numpy()
    np.testing.assert_array_equal(got, want)


def test_pack_valid_concatenates_valid_prefixes():
    from omnijax.models.splice import pack_valid

    embeds = np.arange(3 * 4, dtype=np.float32).reshape(3, 4, 1)
    got = np.asarray(pack_valid(jnp.asarray(embeds), jnp.asarray([2, 0, 3])))[:5, 0]
    np.testing.assert_array_equal(got, [0, 1, 8, 9, 10])
