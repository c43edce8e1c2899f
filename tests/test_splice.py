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
