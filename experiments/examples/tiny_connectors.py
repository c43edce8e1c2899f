"""Tiny omni stage 1, connector alignment: LLM and both towers frozen, only the vision and audio
connectors learn (Ola's projector-only alignment before its image and audio stages; lr 1e-3).

A CPU-sized Ola-layout model (SigLIP-style tower with the 2x2 local-global pooling projector,
Whisper-style encoder with the 10-frame stacking projector, Qwen2 LLM) on synthetic batches.

    python -m omnijax.train --config experiments/examples/tiny_connectors.py --workdir workdirs/tiny_connectors
"""

import ml_collections as mlc

from omnijax.training.config import base_config


def tiny_model() -> mlc.ConfigDict:
    """Ola's architecture at toy sizes (``omnijax.training.omni_task``)."""
    return mlc.ConfigDict(dict(
        name="omni",
        llm=dict(vocab_size=128, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2),
        vision=dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                    use_head=False),
        vision_connector="ola",  # Linear -> 2x2 local-global attention pooling -> GELU -> Linear
        # 100 mel frames per window stand for Whisper's 30 s (3000 frames): 50 encoder outputs.
        audio=dict(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                   max_source_positions=50),
        audio_connector="frame_stack",  # 10 stacked frames -> Linear -> ReLU -> Linear
        frame_stack_hidden=64,
        layout="ola",
        image_token_id=120, audio_token_id=122,
    ))


def get_config(arg=None):
    del arg
    c = base_config()
    c.name = "tiny_connectors"
    c.model = tiny_model()
    sched = dict(lr=1e-3, warmup_fraction=0.1, decay="cosine")
    c.trainable = [
        ("(vision|audio)_connector/.*", sched),  # what this stage aligns
        (".*", None),  # LLM, towers and the layout vectors stay as initialised / imported
    ]
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # data parallel over every device
    c.batch_size = 8
    c.seq_len = 64  # 2 images x 8 tokens + 1 audio window x 8 tokens + text
    c.media.update(image_slots=2, audio_slots=1)
    c.num_tasks, c.task_names = 2, ("caption", "asr")
    c.num_steps = 20
    c.log_every = 1
    c.checkpoint.update(every=10, keep=2)
    return c
