"""Core ML weight-only precisions (`int8-weights`, `int4-weights`) with `coremltools.optimize.coreml.linear_quantize_weights`.

- `int8-weights`: linear symmetric int8, per output channel (iOS16+: `constexpr_affine_dequantize`;
  iOS18+: `constexpr_blockwise_shift_scale` with int8 data).
- `int4-weights`: linear asymmetric int4 (scale + int4 offset), per block of 32 input channels (`constexpr_blockwise_shift_scale`
  with int4 data). Int4 data exists from iOS18 / macOS15 only (iOS16/17's `constexpr_affine_dequantize`
  takes int8/uint8 only), so per-channel int4 would need iOS18 just the same: an older or missing
  deployment target is raised to iOS18 and the artifact's notes say so.

Constants with at least `WEIGHT_THRESHOLD` elements that feed linear / matmul / gather (weights and
the word embedding table) are quantized; the rest (biases, LayerNorm, position / token-type embeddings
that a static sequence length folded into `[1, seq, hidden]` constants) stay fp16. Compute stays fp16:
weights are decompressed at load time, activations are never quantized.
"""

from __future__ import annotations

from typing import Any

#: precision -> (dtype, granularity, block size, minimum deployment target, mode). int4 is asymmetric (an int4 offset
#: per block next to the scale): on all-MiniLM-L6-v2 mean cosine 0.974 vs 0.958 symmetric (12 held-out texts).
SETTINGS = {
    "int8-weights": ("int8", "per_channel", None, "iOS16", "linear_symmetric"),
    "int4-weights": ("int4", "per_block", 32, "iOS18", "linear"),
}
_MODES = {"linear_symmetric": "linear symmetric", "linear": "linear asymmetric: scale + int4 offset"}
PRECISIONS = tuple(SETTINGS)
#: ops whose constant inputs are quantized (weights and embedding tables)
QUANTIZED_CONSUMERS = ("linear", "matmul", "gather", "conv", "einsum")
#: tensors with fewer elements stay fp16 (coremltools' default threshold)
WEIGHT_THRESHOLD = 2048


def deployment_target(ct: Any, target: Any, name: str, precision: str, explicit: bool) -> tuple[Any, str, list[str]]:
    """Raise `target` to what `precision` needs; the note says when and why."""
    minimum = SETTINGS[precision][3]
    needed = getattr(ct.target, minimum)
    if target.value >= needed.value:
        return target, name, []
    why = "int4 weights (constexpr_blockwise_shift_scale with int4 data) need iOS18 / macOS15" if precision == "int4-weights" \
        else "int8 weights (constexpr_affine_dequantize) need iOS16 / macOS13"
    if name.startswith("macOS"):
        minimum = {"iOS16": "macOS13", "iOS18": "macOS15"}[minimum]
        needed = getattr(ct.target, minimum)
    how = f"raised from {name}" if explicit else "no target was given"
    return needed, minimum, [f"deployment target {minimum} ({how}): {why}"]


def quantize(mlmodel: Any, precision: str) -> Any:
    import coremltools.optimize.coreml as cto

    dtype, granularity, block, _, mode = SETTINGS[precision]
    extra = {"block_size": block} if block else {}
    op_config = cto.OpLinearQuantizerConfig(
        mode=mode, dtype=dtype, granularity=granularity, weight_threshold=WEIGHT_THRESHOLD, **extra,
    )
    # Only constants consumed by these ops: weight matrices and embedding tables. A global config would also
    # quantize the folded position / token-type embeddings ([1, seq, hidden] constants feeding an `add`), whose
    # "output channel" axis has size 1: one scale per 32 positions x all channels (int4), or per tensor (int8).
    # On all-MiniLM-L6-v2 that dropped int4 mean cosine from ~0.95 to ~0.81; they stay fp16 (2 x seq x hidden).
    config = cto.OptimizationConfig(op_type_configs={op: op_config for op in QUANTIZED_CONSUMERS})
    return cto.linear_quantize_weights(mlmodel, config)


def notes(precision: str, ops: dict[str, int], compressed: int, by_dtype: dict[str, int]) -> list[str]:
    dtype, granularity, block, _, mode = SETTINGS[precision]
    how = f"per block of {block} input channels" if block else "per output channel"
    constexpr = ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()) if k.startswith("constexpr_"))
    stored = ", ".join(f"{k}: {v}" for k, v in sorted(by_dtype.items()))
    return [
        f"{precision}: weight-only {dtype} ({_MODES[mode]}, {how}) in {compressed} tensors ({constexpr}); "
        f"includes the word embedding table (gather); stored dtypes {stored}",
        f"stay fp16: constants not feeding {'/'.join(QUANTIZED_CONSUMERS)} (biases, LayerNorm, folded position / token-type "
        f"embeddings) and tensors under {WEIGHT_THRESHOLD} elements; compute fp16, activations never quantized",
    ]
