"""Tiny omni stage 2, joint training: the LLM, both connectors and the layout vectors learn, the
towers stay frozen (Ola's image/video/audio stages: lr 1e-5 cosine, warmup 0.05, encoders frozen).

Continue from stage 1 by passing its workdir as the config argument::

    python -m omnijax.train --config experiments/examples/tiny_connectors.py --workdir workdirs/tiny_connectors
    python -m omnijax.train --config experiments/examples/tiny_full.py:workdirs/tiny_connectors \\
        --workdir workdirs/tiny_full
"""

import ml_collections as mlc

from omnijax.training.config import base_config


def tiny_model() -> mlc.ConfigDict:
    """The model of ``tiny_connectors.py`` (a stage continues the previous stage's architecture)."""
    return mlc.ConfigDict(dict(
        name="omni",
        llm=dict(vocab_size=128, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2),
        vision=dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                    use_head=False),
        vision_connector="ola",
        audio=dict(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                   max_source_positions=50),
        audio_connector="frame_stack",
        frame_stack_hidden=64,
        layout="ola",
        image_token_id=120, audio_token_id=122,
    ))


def get_config(arg=None):
    c = base_config()
    c.name = "tiny_full"
    c.model = tiny_model()
    c.init_from = arg or None  # stage 1's workdir: its final params, and a fresh optimizer
    sched = dict(lr=1e-4, warmup_fraction=0.05, decay="cosine")
    c.trainable = [
        ("(vision|audio)/.*", None),  # the encoders stay frozen in every Ola stage
        (".*", sched),  # LLM, connectors, layout vectors
    ]
    c.optimizer.weight_decay = 0.01  # masked off norms, biases and mm_embed
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.batch_size = 16
    c.microbatches = 2  # gradient accumulation: 2 x 8 rows, as a pod stage would for a large global batch
    c.seq_len = 64
    c.media.update(image_slots=2, audio_slots=1)
    c.num_tasks, c.task_names = 2, ("caption", "asr")
    c.num_steps = 20
    c.checkpoint.update(every=10, keep=2)
    return c
