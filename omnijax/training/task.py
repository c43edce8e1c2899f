"""What the trainer needs from a model and its objective: a ``Task``.

The trainer never imports a model. A stage config names a task builder (``c.model.name``: a
registered name, or ``'package.module:function'``), the builder reads the config (and the mesh)
and returns a ``Task``: how to initialise the params, their logical axes and shapes, the loss, and the batch
the loss takes (``omnijax.batch.batch_spec``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

# modality -> (batch field of its media, placeholder token id, placeholder tokens per media slot)
MediaTokens = Mapping[str, tuple[str, int, int]]


@dataclasses.dataclass(frozen=True)
class Task:
    """A model plus its loss, as pure functions.

    init(rng) -> params (plain arrays); loss(params, batch, rng) -> (scalar loss, aux) where aux
    follows ``omnijax.training.losses`` (``tokens``, and per task ``task_loss``/``task_tokens``);
    logical_specs / abstract_params: trees like params of logical ``PartitionSpec``s and
    ``ShapeDtypeStruct``s; batch_spec: the global batch's fields.

    media_tokens: per modality present in the batch, its field, placeholder token id and the number
    of placeholder tokens one media slot takes (one image tile, one video, one audio chunk), which
    lets a synthetic source build batches the model accepts. check_batch: verifies a host batch
    before anything is traced (the trainer runs it on the first batch). model_config: the config of the
    model trained (``OmniConfig`` for ``'omni'``; None for a model the layers above do not know), which
    they read instead of the config's model name: the stage workdir becomes a model directory of it
    (``omnijax.checkpoint.describe_stage``), and the Grain pipeline makes batches for its media budget and
    layout (``omnijax.launch``).
    """

    init: Callable[[jax.Array], Any]
    loss: Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]
    logical_specs: Any
    abstract_params: Any
    batch_spec: Mapping[str, jax.ShapeDtypeStruct]
    vocab_size: int
    num_tasks: int = 0
    media_tokens: MediaTokens = dataclasses.field(default_factory=dict)
    reserved_ids: Sequence[int] = ()  # token ids random text must avoid (placeholders, specials)
    check_batch: Callable[[Mapping[str, Any]], None] | None = None  # host batch check (raises ValueError)
    model_config: Any = None  # the trained model's config, for the layers above the trainer


def from_module(module: nn.Module, init_args: Sequence[Any], loss, **kw) -> Task:
    """A ``Task`` for a Linen module whose ``init(rng, *init_args)`` creates every parameter group
    (init_args may be ``ShapeDtypeStruct``s: they are turned into zeros)."""
    is_abstract = lambda a: isinstance(a, jax.ShapeDtypeStruct)  # noqa: E731
    concrete = lambda: jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype) if is_abstract(a) else a,  # noqa: E731
                                    list(init_args), is_leaf=is_abstract)
    boxed = jax.eval_shape(lambda rng: module.init(rng, *concrete()), jax.random.key(0))
    specs = nn.get_partition_spec(boxed)["params"]
    abstract = nn.meta.unbox(boxed)["params"]
    return Task(init=lambda rng: nn.meta.unbox(module.init(rng, *concrete()))["params"], loss=loss,
                logical_specs=specs, abstract_params=abstract, **kw)


BUILDERS = {"omni": "omnijax.training.omni_task:build"}  # registered name -> 'module:function'


def build_task(config, mesh) -> Task:
    """The task of a stage config: ``config.model.name`` is a key of ``BUILDERS`` or a
    ``'module:function'`` path to a function ``(config, mesh) -> Task`` (the mesh is for losses
    that place work explicitly, e.g. the vocab-parallel cross-entropy)."""
    name = config.model.name
    target = BUILDERS.get(name, name)
    if ":" not in target:
        raise ValueError(f"model.name {name!r} is neither a registered model ({', '.join(sorted(BUILDERS))}) nor "
                         "a 'package.module:function' path to a task builder")
    module, fn = target.split(":", 1)
    return getattr(importlib.import_module(module), fn)(config, mesh)
