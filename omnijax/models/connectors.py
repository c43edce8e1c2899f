"""Connectors: the small modules that carry encoder features into the LLM's embedding space.

Each connector is a Flax Linen module with compute ``dtype`` and ``param_dtype``; every parameter
carries logical axis names (encoder widths ``vision_embed`` / ``audio_embed``, LLM width ``embed``,
hidden widths ``mlp``) and outputs are constrained to ``('activation_batch', 'activation_length',
'activation_embed')`` (spatial axes unconstrained). Every connector has ``output_length``, a pure
function of the input length, so the data pipeline can expand placeholders to the exact token count.

Parameter names follow the checkpoint each module is converted from:

- ``MLPProjector``: LLaVA-OneVision ``multi_modal_projector.{linear_1,linear_2}`` (also the two-layer
  MLP adapters of Capybara-OMNI).
- ``LinearProjector``: Qwen2-Audio ``multi_modal_projector.linear``.
- ``OlaVisionProjector`` / ``LocalGlobalAttentionPool``: Ola's ``OlaMLP`` (``proj1``, ``pooler``,
  ``proj2``) and ``NormalizedDwPooler`` (``predictor.0``, ``predictor.2``).
- ``AvgPoolProjector``: plain 2x2 average pooling (no parameters) then the LLaVA MLP (``projector.linear_{1,2}``),
  the baseline Ola's pooling is measured against.
- ``FrameStackProjector``: Ola's speech ``EncoderProjectorConcat`` (``linear1``, ``linear2``).
- ``ConvGMLP``: Baichuan-Omni-1.5's ``OmniAudioVQBridgeTokenizer`` (``gate_proj``, ``up_proj``,
  ``down_proj``, ``layer_norm``).
- ``StridePoolProjector``: ``AvgPoolStride`` (torch ``AvgPool1d(k, k)``, no parameters) then ``linear``.
- ``MMEmbed``: the learned ``begin`` / ``sep`` / ``newline`` / ``end`` vectors (param group
  ``mm_embed``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

MM_EMBED_NAMES = ("begin", "sep", "newline", "end")


def stacked_length(length: int, k: int) -> int:
    """Tokens from stacking ``k`` consecutive frames of ``length`` frames; ``length`` must divide by k."""
    if length % k:
        raise ValueError(
            f"frame stacking needs a length that is a multiple of k: got T={length}, k={k}; "
            f"pad or trim the encoder output to a multiple of {k} frames"
        )
    return length // k


def strided_length(length: int, stride: int) -> int:
    """Windows of ``stride`` frames over ``length`` frames, the last one zero-padded: ``ceil(length / stride)``."""
    return -(-length // stride)


def pooled_grid(height: int, width: int) -> tuple[int, int]:
    """Grid ``(ceil(height / 2), ceil(width / 2))`` after 2x2 local-global pooling (an odd side is
    padded by repeating its last row / column, e.g. SigLIP-384/14's 27x27 -> 14x14)."""
    if height < 1 or width < 1:
        raise ValueError(f"LocalGlobalAttentionPool needs a non-empty patch grid, got {height}x{width}")
    return -(-height // 2), -(-width // 2)


def _groups_2x2(x: jax.Array) -> jax.Array:
    """``[batch, h, w, C] -> [batch, ceil(h/2), ceil(w/2), 4, C]``: each 2x2 neighbourhood, row-major (an odd side
    padded by repeating its last row / column, ``pooled_grid``)."""
    b, h, w, c = x.shape
    h2, w2 = pooled_grid(h, w)
    x = jnp.pad(x, ((0, 0), (0, 2 * h2 - h), (0, 2 * w2 - w), (0, 0)), mode="edge")
    return x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h2, w2, 4, c)


def _gather_groups(x: jax.Array, groups: jax.Array) -> jax.Array:
    """Packed patches ``x [batch, P, C]`` gathered into groups ``[batch, T, k]`` of patch indices ->
    ``[batch, T, k, C]`` (native-resolution views, ``omnijax.models.layouts.ola_native_decoder``)."""
    b, t, k = groups.shape
    return jnp.take_along_axis(x, groups.reshape(b, t * k, 1), axis=1, mode="clip").reshape(b, t, k, -1)


def _dense(features: int, axes: tuple[str, str], name: str, dtype, param_dtype, use_bias: bool = True):
    """``nn.Dense`` with kernel axes ``(in, out)`` and bias axis ``(out,)``."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
        name=name,
    )


def _constrain(x: jax.Array) -> jax.Array:
    """Logical constraint on a connector output ``[batch, length, embed]`` or ``[batch, h, w, embed]``."""
    middle = ("activation_length",) if x.ndim == 3 else (None,) * (x.ndim - 2)
    return nn.with_logical_constraint(x, ("activation_batch", *middle, "activation_embed"))


class MLPProjector(nn.Module):
    """Two-layer MLP ``linear_1 -> GELU -> linear_2`` (both with bias).

    ``[batch, tokens, in_dim] -> [batch, tokens, out_dim]``. Matches LLaVA-OneVision's
    ``LlavaOnevisionMultiModalProjector`` (exact erf GELU, hidden width = ``out_dim``) and the
    ``mlp2x_gelu`` adapter of LLaVA-derived code (Capybara-OMNI's vision MLP, Ola's non-pooling option);
    with ``in_axis='audio_embed'`` it is Capybara's audio adapter.
    """

    out_dim: int
    hidden_dim: int | None = None  # None: the LLM width, as in LLaVA
    gelu_approximate: bool = False
    in_axis: str = "vision_embed"
    hidden_axis: str = "mlp"
    out_axis: str = "embed"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def output_length(self, length: int) -> int:
        return length

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = self.hidden_dim or self.out_dim
        x = _dense(hidden, (self.in_axis, self.hidden_axis), "linear_1", self.dtype, self.param_dtype)(x)
        x = nn.gelu(x, approximate=self.gelu_approximate)
        x = _dense(self.out_dim, (self.hidden_axis, self.out_axis), "linear_2", self.dtype, self.param_dtype)(x)
        return _constrain(x)


class LinearProjector(nn.Module):
    """One Linear layer with bias, named ``linear``.

    ``[batch, tokens, in_dim] -> [batch, tokens, out_dim]``. Matches Qwen2-Audio's
    ``Qwen2AudioMultiModalProjector`` (``multi_modal_projector.linear``, 1280 -> text hidden).
    """

    out_dim: int
    in_axis: str = "audio_embed"
    out_axis: str = "embed"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def output_length(self, length: int) -> int:
        return length

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _dense(self.out_dim, (self.in_axis, self.out_axis), "linear", self.dtype, self.param_dtype)(x)
        return _constrain(x)


class LocalGlobalAttentionPool(nn.Module):
    """Ola's Local-Global Attention Pooling: each 2x2 neighbourhood becomes one feature.

    ``[batch, h, w, C] -> [batch, ceil(h/2), ceil(w/2), C]`` (an odd side is padded by repeating its
    last row / column, so the edge groups pool a duplicated patch). The 2x2 group ``[..., 4, C]`` is joined
    with its mean (the global context) to ``[..., 4, 2C]``; the predictor ``predictor_0`` (2C -> C),
    exact GELU, ``predictor_2`` (C -> C) scores each channel of each position; a softmax over the 4
    positions (float32) weights the sum. Matches Ola's ``NormalizedDwPooler`` (``forward_type='2x'``);
    the names mirror its ``predictor`` nn.Sequential indices. The weights are sown as
    ``intermediates/weights`` ``[batch, h/2, w/2, 4, C]``.

    ``grouped=True``: ``x`` is already the groups ``[..., 4, C]`` (native-resolution views, whose groups the
    layout gathers from packed patches, ``omnijax.models.layouts.ola_native_decoder``) -> ``[..., C]``.
    """

    channel_axis: str = "embed"
    hidden_axis: str = "mlp"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def output_grid(self, height: int, width: int) -> tuple[int, int]:
        return pooled_grid(height, width)

    @nn.compact
    def __call__(self, x: jax.Array, grouped: bool = False) -> jax.Array:
        c = x.shape[-1]
        groups = (x if grouped else _groups_2x2(x)).astype(self.dtype)
        context = jnp.broadcast_to(groups.mean(axis=-2, keepdims=True), groups.shape)
        fused = jnp.concatenate([groups, context], axis=-1)
        axes = (self.channel_axis, self.hidden_axis)
        scores = _dense(c, axes, "predictor_0", self.dtype, self.param_dtype)(fused)
        scores = _dense(c, axes[::-1], "predictor_2", self.dtype, self.param_dtype)(nn.gelu(scores, approximate=False))
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-2)
        self.sow("intermediates", "weights", weights)
        return _constrain((weights.astype(self.dtype) * groups).sum(axis=-2))


class _Pooled2x2Projector(nn.Module):
    """The fields and token count of the vision projectors on 2x2-pooled grids (``pooled_grid``)."""

    out_dim: int
    in_axis: str = "vision_embed"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def output_length(self, height: int, width: int) -> int:
        h2, w2 = pooled_grid(height, width)
        return h2 * w2


class OlaVisionProjector(_Pooled2x2Projector):
    """Ola's vision projector: ``proj1`` -> LocalGlobalAttentionPool -> GELU -> ``proj2``.

    ``[batch, h, w, vision_dim] -> [batch, h/2, w/2, out_dim]``. Matches Ola's ``OlaMLP`` (``proj1``,
    ``pooler``, ``proj2``; exact GELU); its begin/newline/sep/end vectors live in ``MMEmbed``.
    With ``groups [batch, T, 4]`` (native-resolution views): ``x [batch, P, vision_dim]`` is the row's
    packed patches, and token t pools the 4 patches ``groups[:, t]`` -> ``[batch, T, out_dim]``. The
    LLM-width intermediate is labelled ``mlp`` (the predictor's hidden width ``embed``), so no kernel
    repeats a logical axis.
    """

    @nn.compact
    def __call__(self, x: jax.Array, groups: jax.Array | None = None) -> jax.Array:
        x = _dense(self.out_dim, (self.in_axis, "mlp"), "proj1", self.dtype, self.param_dtype)(x)
        if groups is not None:
            x = _gather_groups(x, groups)
        x = LocalGlobalAttentionPool(
            channel_axis="mlp", hidden_axis="embed", dtype=self.dtype, param_dtype=self.param_dtype, name="pooler"
        )(x, grouped=groups is not None)
        x = nn.gelu(x, approximate=False)
        x = _dense(self.out_dim, ("mlp", "embed"), "proj2", self.dtype, self.param_dtype)(x)
        return _constrain(x)


class AvgPoolProjector(_Pooled2x2Projector):
    """Plain 2x2 average pooling then LLaVA's MLP: the baseline of Ola's Local-Global attention pooling.

    ``[batch, h, w, vision_dim] -> [batch, ceil(h/2), ceil(w/2), out_dim]``: each 2x2 neighbourhood of patches
    averaged with equal weights (an odd side padded by repeating its last row / column, as
    ``LocalGlobalAttentionPool``, so both give ``pooled_grid``), then ``MLPProjector`` (``projector``:
    ``linear_1`` -> exact GELU -> ``linear_2``). The pooling has no parameters. With ``groups [batch, T, 4]``
    (native-resolution views, as ``OlaVisionProjector``): token t averages the packed patches ``groups[:, t]``
    of ``x [batch, P, vision_dim]`` -> ``[batch, T, out_dim]``.
    """

    @nn.compact
    def __call__(self, x: jax.Array, groups: jax.Array | None = None) -> jax.Array:
        grouped = _groups_2x2(x) if groups is None else _gather_groups(x, groups)
        pooled = grouped.astype(self.dtype).mean(axis=-2)
        return MLPProjector(self.out_dim, in_axis=self.in_axis, dtype=self.dtype, param_dtype=self.param_dtype,
                            name="projector")(pooled)


class FrameStackProjector(nn.Module):
    """Ola's speech projector: stack ``k`` frames, ``linear1`` -> ReLU -> ``linear2``.

    ``[batch, T, C] -> [batch, T/k, k*C] -> [batch, T/k, out_dim]``; T must be a multiple of k (Ola:
    1500 Whisper frames per 30 s chunk, k=10 -> 150 tokens). Frames are concatenated time-major
    (element ``j*C + c`` is channel c of frame j). Matches Ola's ``EncoderProjectorConcat`` (hidden 2048).
    """

    out_dim: int
    k: int = 10
    hidden_dim: int = 2048
    in_axis: str = "audio_embed"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def output_length(self, length: int) -> int:
        return stacked_length(length, self.k)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, c = x.shape
        x = x.reshape(b, self.output_length(t), self.k * c)
        x = _dense(self.hidden_dim, (self.in_axis, "mlp"), "linear1", self.dtype, self.param_dtype)(x)
        x = nn.relu(x)
        x = _dense(self.out_dim, ("mlp", "embed"), "linear2", self.dtype, self.param_dtype)(x)
        return _constrain(x)


class ConvGMLP(nn.Module):
    """Baichuan-Omni-1.5's Conv-GMLP audio bridge: gated strided conv, residual, LayerNorm.

    ``[batch, T, C] -> [batch, ceil(T/s), s*C]`` (or ``out_dim``). T is right-padded with zeros to a
    multiple of the stride s; the s frames of each window are concatenated time-major into
    ``r [batch, T/s, s*C]``; ``y = LayerNorm(down_proj(SiLU(gate_proj(r)) * up_proj(r)) + r)``
    (50 Hz -> 12.5 Hz at s=4). Matches ``OmniAudioVQBridgeTokenizer`` up to its layer norm (the public
    model quantises ``y`` with an RVQ; omnijax feeds it to the LLM). If ``out_dim`` is set and differs
    from s*C, ``out_proj`` (Linear with bias, an omnijax addition) maps ``y`` to the LLM width.

    ``gate_proj`` / ``up_proj`` are torch ``Conv1d(C, s*C, kernel_size=s, stride=s, bias=False)``. On
    non-overlapping windows the conv is a Dense on the time-major window, so a torch weight ``W
    [s*C, C, s]`` becomes the Dense kernel ``K[j*C + c, o] = W[o, c, j]``, i.e. ``K =
    W.transpose(2, 1, 0).reshape(s*C, s*C)``. ``down_proj`` is Linear without bias; ``layer_norm``
    has torch's eps 1e-5.
    """

    stride: int = 4
    out_dim: int | None = None
    norm_eps: float = 1e-5
    in_axis: str = "audio_embed"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def output_length(self, length: int) -> int:
        return strided_length(length, self.stride)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, c = x.shape
        n, wide = self.output_length(t), self.stride * c
        x = jnp.pad(x, ((0, 0), (0, n * self.stride - t), (0, 0)))
        r = x.reshape(b, n, wide).astype(self.dtype)
        gate = _dense(wide, (self.in_axis, "mlp"), "gate_proj", self.dtype, self.param_dtype, use_bias=False)(r)
        up = _dense(wide, (self.in_axis, "mlp"), "up_proj", self.dtype, self.param_dtype, use_bias=False)(r)
        down = _dense(wide, ("mlp", self.in_axis), "down_proj", self.dtype, self.param_dtype, use_bias=False)
        y = nn.LayerNorm(
            epsilon=self.norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (self.in_axis,)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.in_axis,)),
            name="layer_norm",
        )(down(nn.silu(gate) * up) + r)
        if self.out_dim is not None and self.out_dim != wide:
            y = _dense(self.out_dim, (self.in_axis, "embed"), "out_proj", self.dtype, self.param_dtype)(y)
        return _constrain(y)


class AvgPoolStride(nn.Module):
    """Average pooling over time with window = stride = k; the remainder is dropped.

    ``[batch, T, C] -> [batch, T // k, C]``: torch ``AvgPool1d(k, k)`` as in Qwen2-Audio's encoder and
    Capybara-OMNI's stride-2 audio pooling. No parameters; the input is cast to ``dtype``.
    """

    k: int = 2
    dtype: jnp.dtype = jnp.float32

    def output_length(self, length: int) -> int:
        return length // self.k

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.avg_pool(x.astype(self.dtype), (self.k,), strides=(self.k,), padding="VALID")
        return _constrain(x)


class StridePoolProjector(nn.Module):
    """Stride pooling as an audio connector: ``AvgPoolStride(stride)`` then one Linear with bias (``linear``).

    ``[batch, T, C] -> [batch, T // stride, out_dim]``: Qwen2-Audio's ``AvgPool1d(2, 2)`` + projector
    shape on an encoder without its own pooling (e.g. Whisper), Capybara-OMNI's "stride-2 pooling".
    """

    out_dim: int
    stride: int = 2
    in_axis: str = "audio_embed"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def output_length(self, length: int) -> int:
        return length // self.stride

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = AvgPoolStride(k=self.stride, dtype=self.dtype)(x)
        x = _dense(self.out_dim, (self.in_axis, "embed"), "linear", self.dtype, self.param_dtype)(x)
        return _constrain(x)


class MMEmbed(nn.Module):
    """Learned layout vectors ``begin``, ``sep``, ``newline``, ``end``, each ``[embed_dim]``.

    ``() -> {name: [embed_dim]}``. Ola wraps images and videos in ``begin ... end`` with ``newline``
    after each row and ``sep`` between views/frames (``image_begin``, ``image_newline``, ... in Ola's
    ``OlaMLP``). LLaVA-OneVision has only ``image_newline``: ``names=('newline',)``. The top-level
    parameter group ``mm_embed``.
    """

    embed_dim: int
    names: tuple[str, ...] = MM_EMBED_NAMES
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self) -> dict[str, jax.Array]:
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",))
        return {
            name: self.param(name, init, (self.embed_dim,), self.param_dtype).astype(self.dtype)
            for name in self.names
        }
