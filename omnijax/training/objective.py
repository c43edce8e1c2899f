"""The training objective of an omni model on the batch contract: next-token cross-entropy.

``loss_fn(model, params, batch)`` runs ``OmniModel.hidden`` (towers, layout, LLM with packed segments)
and applies the masked cross-entropy of ``omnijax.training.losses`` to ``batch['targets']`` weighted by
``batch['loss_weights']``:

- plain: ``OmniModel.logits`` (float32 ``[B, T, vocab]``) then ``masked_cross_entropy``;
- ``vocab_parallel=True``: ``vocab_parallel_cross_entropy`` under ``shard_map`` on ``mesh``, straight
  from the hidden states and the LM head (or the tied embedding): no device ever holds logits over the
  full vocabulary. The batch is split over the mesh's ``data``/``fsdp`` axes, the vocabulary over
  ``tensor``.

Both return ``(loss, aux)`` with the aux sums of ``losses`` (``loss_sum``, ``tokens``, and per task with
``num_tasks > 0``: ``batch['task_ids']`` index the tasks). Pure: usable inside ``jax.grad`` / ``jit``.
Check the host batch with ``omnijax.batch.check_batch`` before the step is traced.
"""

from __future__ import annotations

from typing import Any

from jax.sharding import Mesh

from omnijax.training.losses import masked_cross_entropy, vocab_parallel_cross_entropy


def loss_fn(model, params: Any, batch: dict, *, mesh: Mesh | None = None, vocab_parallel: bool = False,
            num_tasks: int = 0):
    """Mean next-token CE over the weighted positions of ``batch`` -> ``(loss, aux)``.

    model: an ``omnijax.models.omni.OmniModel``; params: its param tree (``{'llm': ..., ...}``);
    mesh: required with ``vocab_parallel`` (axes ``data``, ``fsdp``, ``tensor``); num_tasks: static
    number of tasks for per-task sums.
    """
    variables = {"params": params}
    hidden = model.apply(variables, batch, method="hidden")
    task_ids = batch["task_ids"] if num_tasks else None
    if not vocab_parallel:
        logits = model.apply(variables, hidden, method="logits")
        return masked_cross_entropy(logits, batch["targets"], batch["loss_weights"], task_ids, num_tasks)
    if mesh is None:
        raise ValueError("vocab_parallel=True needs the mesh whose 'tensor' axis splits the vocabulary")
    tied = model.cfg.llm.tie_word_embeddings
    llm = params["llm"]
    kernel = llm["embed_tokens"]["embedding"] if tied else llm["lm_head"]["kernel"]
    return vocab_parallel_cross_entropy(hidden, kernel, batch["targets"], batch["loss_weights"], mesh, tied=tied,
                                        task_ids=task_ids, num_tasks=num_tasks)
