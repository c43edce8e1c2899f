"""Tiny random transformers models built offline (never downloaded): the oracles of the tests."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# Five Qwen2 configs covering MHA / GQA 4:1 / GQA 2:1, tied / untied, theta 1e4 / 1e6, widths
# that are not powers of two, and the legacy top-level `rope_theta` key.
QWEN2_CONFIGS = {
    "mha_untied_1e4": dict(hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4,
                           tie_word_embeddings=False, rope_theta=1e4),
    "gqa4_tied_1e6": dict(hidden_size=64, intermediate_size=136, num_attention_heads=8, num_key_value_heads=2,
                          tie_word_embeddings=True, rope_theta=1e6),
    "gqa2_untied_1e6_w72": dict(hidden_size=72, intermediate_size=120, num_attention_heads=6, num_key_value_heads=3,
                                tie_word_embeddings=False, rope_theta=1e6),
    "mha_tied_1e4_w40": dict(hidden_size=40, intermediate_size=88, num_attention_heads=5, num_key_value_heads=5,
                             tie_word_embeddings=True, rope_theta=1e4),
    "gqa4_untied_legacy_theta": dict(hidden_size=96, intermediate_size=160, num_attention_heads=8,
                                     num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1e6,
                                     legacy_rope_key=True),
}


def make_qwen2(path: str, name: str, seed: int = 0, vocab_size: int = 128, num_hidden_layers: int = 2,
               initializer_range: float = 0.2, **extra) -> Qwen2ForCausalLM:
    """Save a random ``Qwen2ForCausalLM`` to ``path`` (``max_shard_size`` in ``extra`` shards it).

    ``initializer_range`` is large so logits have clear argmax margins (greedy decoding is exact).
    """
    kw = dict(QWEN2_CONFIGS[name])
    legacy = kw.pop("legacy_rope_key", False)
    shard = extra.pop("max_shard_size", None)
    kw.update(extra)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, num_hidden_layers=num_hidden_layers,
                      initializer_range=initializer_range, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, **kw)
    model = Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    if legacy:  # rewrite config.json the way pre-v5 checkpoints store theta
        cpath = os.path.join(path, "config.json")
        with open(cpath) as f:
            c = json.load(f)
        theta = c.pop("rope_parameters")["rope_theta"]
        c["rope_theta"] = theta
        with open(cpath, "w") as f:
            json.dump(c, f, indent=2)
    return model


def torch_logits(model, input_ids, attention_mask=None, position_ids=None) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(input_ids)),
                    attention_mask=None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)),
                    position_ids=None if position_ids is None else torch.as_tensor(np.asarray(position_ids)))
    return out.logits.float().numpy()


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())
