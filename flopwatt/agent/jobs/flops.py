"""Count a model's multiply-adds and FLOPs, cross-checked against fvcore and torchvision.

Units (DESIGN.md, "Units and names"): a MAC is one fused multiply-add and 1 MAC = 2 FLOPs.
``macs`` counts the multiply-adds of convolutions, matrix products (linear layers, ``mm``,
``addmm``, ``bmm``, ``baddbmm``, ``einsum``...) and attention (QKᵀ and attention·V); ``flops`` is
exactly ``2 * macs``. Normalisation, activations, pooling and other elementwise work are never
part of either; fvcore's estimates for them are reported on their own.

The primary count is PyTorch's ``FlopCounterMode`` (FLOPs, 2 per multiply-add), taken with:

- the model in eval mode, as it is served;
- the fused multi-head-attention fast path off (``torch.backends.mha``), because
  ``FlopCounterMode`` has no formula for ``aten._native_multi_head_attention``: with it on, the
  QKV/output projections *and* the attention of every torchvision ViT layer vanish from the count
  (ViT-B/16: 22.54 instead of 35.13 GFLOPs). The previous setting is restored afterwards;
- formulas for the scaled-dot-product-attention kernels ``FlopCounterMode`` does not know, above
  all the CPU one (``aten._scaled_dot_product_flash_attention_for_cpu``).

Counting on the meta device costs no arithmetic: build the model with
``build_model(name, device="meta")`` (or use ``count_zoo_model``) and ViT-H/14 at 518 px counts in
well under a second.

The cross-checks are fvcore's ``FlopCountAnalysis`` (whose "flop" is one multiply-add, i.e. a
MAC; an ``aten::scaled_dot_product_attention`` handle is added because fvcore has none) and
torchvision's published ``_ops`` (GMACs per sample, see ``zoo``). fvcore traces the model with
real tensors, so it cannot run on the meta device.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from flopwatt.agent.jobs.zoo import ZooEntry, build_model, example_input, zoo_entry, zoo_names

__all__ = [
    "FVCORE_MAC_OPS",
    "FlopCount",
    "Reference",
    "count_flops",
    "count_zoo_model",
    "count_zoo_models",
    "extra_flop_formulas",
    "is_mac_like_op",
]

#: What a count can be compared with: fvcore's MACs or torchvision's published MACs.
Reference = Literal["fvcore", "published"]

#: fvcore operator names (``by_operator()`` keys) whose counts are multiply-adds. Everything
#: else fvcore counts (batch_norm, layer_norm, group_norm, adaptive_avg_pool2d, upsample...) is an
#: estimate of other work and goes to ``FlopCount.fvcore_extra_counts``.
FVCORE_MAC_OPS: frozenset[str] = frozenset(
    {"conv", "linear", "matmul", "mm", "addmm", "bmm", "einsum", "scaled_dot_product_attention"}
)

# Operator names that carry multiply-adds; used only to flag coverage gaps, so a false positive
# costs a line in a report and a false negative a silent undercount: err on the wide side.
_MAC_HINT = re.compile(r"conv|mm|matmul|linear|einsum|attention|mv|dot|rnn|lstm|gru|transformer")
_NOT_MAC = re.compile(r"upsample|convert|mvlgamma|grid_sampler")


def is_mac_like_op(op_name: str) -> bool:
    """Whether an operator name (``aten.bmm``, ``aten::linear``, ``bmm``) looks like it does
    multiply-adds: convolution, matrix products, attention, recurrent cells.

    A heuristic on the name, for coverage reports; ``upsample_bilinear2d`` and the like are
    excluded.
    """
    base = re.split(r"::|\.", op_name)
    name = base[1] if len(base) > 1 and base[0] in ("aten", "prim", "torch") else op_name
    return bool(_MAC_HINT.search(name)) and not _NOT_MAC.search(name)


def _attention_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *_args: Any,
    out_shape: Sequence[int] | None = None,
    **_kwargs: Any,
) -> int:
    """FLOPs of scaled-dot-product attention: 2 × (QKᵀ + attention·V multiply-adds).

    For q (…, L, E), k (…, S, E) and v (…, S, Ev) that is 2·(…)·L·S·(E + Ev), where (…) are the
    query's leading (batch, head) dimensions: with grouped-query attention the kernel broadcasts
    the fewer key/value heads to the query's. Masks and causality are ignored, as in PyTorch's
    own SDPA formula (the kernels compute the full product).
    """
    *lead, length_q, dim_qk = query_shape
    length_kv = key_shape[-2]
    dim_v = value_shape[-1]
    return 2 * math.prod(lead) * length_q * length_kv * (dim_qk + dim_v)


def _mv_flops(
    matrix_shape: Sequence[int], _vector_shape: Sequence[int], *_args: Any, **_kwargs: Any
) -> int:
    rows, cols = matrix_shape
    return 2 * rows * cols


def _addmv_flops(
    _self_shape: Sequence[int],
    matrix_shape: Sequence[int],
    vector_shape: Sequence[int],
    *_args: Any,
    **_kwargs: Any,
) -> int:
    # The added vector is not a multiply-add; only the matrix-vector product counts.
    return _mv_flops(matrix_shape, vector_shape)


def _dot_flops(a_shape: Sequence[int], _b_shape: Sequence[int], **_kwargs: Any) -> int:
    return 2 * math.prod(a_shape)


def extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas this module adds to ``FlopCounterMode`` (its ``custom_mapping``).

    Scaled-dot-product-attention kernels PyTorch has no formula for (it covers flash, efficient
    and cuDNN): the CPU flash kernel, the MPS math kernel and the out-of-tree
    ``fused_attention_overrideable`` one; plus matrix-vector and dot products. The composite
    ``aten.scaled_dot_product_attention`` and its math fallback need none: they decompose into
    the kernels or into counted ``bmm``s. Ops missing from this torch build are left out.
    """
    formulas: dict[str, Callable[..., int]] = {
        "_scaled_dot_product_flash_attention_for_cpu": _attention_flops,
        "_scaled_dot_product_attention_math_for_mps": _attention_flops,
        "_scaled_dot_product_fused_attention_overrideable": _attention_flops,
        "mv": _mv_flops,
        "addmv": _addmv_flops,
        "dot": _dot_flops,
        "vdot": _dot_flops,
    }
    mapping: dict[Any, Callable[..., int]] = {}
    for op_name, formula in formulas.items():
        packet = getattr(torch.ops.aten, op_name, None)
        if packet is not None and packet not in flop_registry:
            mapping[packet] = formula
    return mapping


@dataclass(frozen=True)
class FlopCount:
    """Multiply-adds and FLOPs of one forward pass of a model over one whole input batch.

    Every count covers the whole batch unless its name says ``per_sample``.

    Attributes:
        model: the model's name (free text; the zoo name for zoo models).
        input_shape: the example input's shape, ``(batch, channels, height, width)`` for images.
        macs: multiply-adds of convolutions, matrix products and attention (MACs).
        flops: ``2 * macs`` (FLOPs).
        macs_by_op: ``macs`` split by aten operator (``aten.convolution``, ``aten.addmm``...).
        fvcore_macs: fvcore's count of the same operators (MACs), or None when fvcore did not
            run (``fvcore_error`` says why).
        fvcore_extra_counts: fvcore's counts of everything else it counts (BatchNorm 2 per input
            element in eval mode and 5 in training mode, LayerNorm 5, adaptive pooling 1...), by
            operator; fvcore's own rough units, never part of ``macs``.
        fvcore_error: why fvcore did not run or failed, else None.
        published_macs: torchvision's published multiply-adds × batch (MACs), or None where
            none applies (not a zoo model, or not at its native input size).
        uncounted_ops: coverage: operators a counter saw but could not count, with how often,
            keyed ``"flop_counter:<op>"`` (multiply-add-like aten ops with no formula) or
            ``"fvcore:<op>"`` (every op fvcore had no handle for: mostly elementwise).
        training: whether the model ran in training mode (normally False: eval mode).
    """

    model: str
    input_shape: tuple[int, ...]
    macs: int
    flops: int
    macs_by_op: Mapping[str, int]
    fvcore_macs: int | None = None
    fvcore_extra_counts: Mapping[str, int] = field(default_factory=dict)
    fvcore_error: str | None = None
    published_macs: float | None = None
    uncounted_ops: Mapping[str, int] = field(default_factory=dict)
    training: bool = False

    def __post_init__(self) -> None:
        if self.flops != 2 * self.macs:
            raise ValueError(f"flops ({self.flops}) must be 2 × macs ({self.macs})")
        if self.macs != sum(self.macs_by_op.values()):
            raise ValueError("macs must equal the sum of macs_by_op")

    @property
    def batch(self) -> int:
        """Samples in the input batch (its first dimension)."""
        return self.input_shape[0]

    @property
    def macs_per_sample(self) -> float:
        """Multiply-adds per sample (MACs)."""
        return self.macs / self.batch

    @property
    def flops_per_sample(self) -> float:
        """FLOPs per sample."""
        return self.flops / self.batch

    @property
    def uncounted_mac_ops(self) -> dict[str, int]:
        """The entries of ``uncounted_ops`` that look like multiply-adds (see
        ``is_mac_like_op``): the ones that can make ``macs`` too low."""
        return {
            key: n for key, n in self.uncounted_ops.items() if is_mac_like_op(key.split(":", 1)[1])
        }

    def relative_difference(self, reference: Reference) -> float | None:
        """``(macs − reference) / reference``: how far this count is from a cross-check.

        Args:
            reference: ``"fvcore"`` (fvcore's MACs) or ``"published"`` (torchvision's figure).

        Returns:
            The signed ratio (0.01 = this count is 1 % higher), or None when the reference is
            absent or zero.

        Raises:
            ValueError: ``reference`` is not one of the two names.
        """
        if reference == "fvcore":
            ref: float | None = None if self.fvcore_macs is None else float(self.fvcore_macs)
        elif reference == "published":
            ref = self.published_macs
        else:
            raise ValueError(f"unknown reference {reference!r}; accepted: fvcore, published")
        if ref is None or ref == 0:
            return None
        return (self.macs - ref) / ref

    def summary(self) -> str:
        """A few human-readable lines: the count, both cross-checks and any coverage gaps."""

        def rel(reference: Reference) -> str:
            diff = self.relative_difference(reference)
            return "—" if diff is None else f"{diff:+.3%}"

        fvcore = (
            f"{self.fvcore_macs / 1e9:.4f} GMACs ({rel('fvcore')})"
            if self.fvcore_macs is not None
            else f"— ({self.fvcore_error})"
        )
        published = (
            f"{self.published_macs / 1e9:.4f} GMACs ({rel('published')})"
            if self.published_macs is not None
            else "—"
        )
        lines = [
            f"{self.model or 'model'} input {tuple(self.input_shape)}: "
            f"{self.macs / 1e9:.4f} GMACs = {self.flops / 1e9:.4f} GFLOPs",
            f"  fvcore:    {fvcore}",
            f"  published: {published}",
        ]
        if self.fvcore_extra_counts:
            extra = ", ".join(f"{k} {v / 1e9:.4f} G" for k, v in self.fvcore_extra_counts.items())
            lines.append(f"  fvcore non-MAC estimates (not in macs): {extra}")
        if self.uncounted_ops:
            gaps = ", ".join(f"{k}×{v}" for k, v in sorted(self.uncounted_ops.items()))
            lines.append(f"  uncounted: {gaps}")
        return "\n".join(lines)


# TorchDispatchMode's own methods are unannotated in torch, hence the two ignores below.
class _OpRecorder(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts the aten operators that reach it.

    Entered *outside* ``FlopCounterMode``, it sees the ops that mode finally runs, after it has
    decomposed the composite ones: exactly the ops a formula could have counted.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.seen: Counter[Any] = Counter()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.seen[func.overloadpacket] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


@contextmanager
def _model_mode(model: nn.Module, *, training: bool) -> Iterator[None]:
    """Run the block with every submodule in the requested mode, then put back each submodule's
    own mode (a model may mix them, so one ``model.train(flag)`` would not restore it)."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, was_training in modes:
            module.training = was_training


@contextmanager
def _buffers_preserved(model: nn.Module) -> Iterator[None]:
    """Restore the model's buffers after the block: a training-mode forward updates BatchNorm's
    running statistics, and counting must leave the model as it found it."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def _fvcore_attention_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``, in MACs (fvcore's unit)."""
    from fvcore.nn.jit_handles import get_shape

    shapes = [get_shape(value) for value in inputs[:3]]
    if any(shape is None for shape in shapes):
        raise ValueError("scaled_dot_product_attention traced without complete input shapes")
    return _attention_flops(*shapes) // 2


def _fvcore_counts(
    model: nn.Module, example: torch.Tensor
) -> tuple[int, dict[str, int], dict[str, int]]:
    """fvcore's (MACs, extra counts by op, unsupported ops by op) for one forward pass.

    Raises:
        ImportError: fvcore is not installed.
        Exception: whatever fvcore's tracing raises.
    """
    with warnings.catch_warnings():
        # Importing fvcore.nn scripts a loss function, which torch 2.14 deprecates with a
        # FutureWarning; that is fvcore's business, not a problem with the count.
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, (example,))
    analysis.set_op_handle("aten::scaled_dot_product_attention", _fvcore_attention_handle)
    # Warnings off: the gaps are returned as data (uncounted_ops) instead of logged.
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # Trace warnings (data-dependent Python control flow) are fvcore's known noise; fvcore
    # silences torch.jit.TracerWarning itself and lets any other warning through.
    analysis.tracer_warnings("no_tracer_warning")
    by_op = {str(op): int(n) for op, n in analysis.by_operator().items()}
    macs = sum(n for op, n in by_op.items() if op in FVCORE_MAC_OPS)
    extra = {op: n for op, n in by_op.items() if op not in FVCORE_MAC_OPS}
    unsupported = {str(op): int(n) for op, n in analysis.unsupported_ops().items()}
    return macs, extra, unsupported


def _published_for(name: str, input_shape: tuple[int, ...]) -> float | None:
    """torchvision's figure for the whole batch, if ``name`` is a zoo model at its native size."""
    if name not in zoo_names() or len(input_shape) != 4:
        return None
    entry = zoo_entry(name)
    if entry.published_macs is None or input_shape[2:] != (entry.input_size, entry.input_size):
        return None
    return entry.published_macs * input_shape[0]


def count_flops(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    name: str = "",
    with_fvcore: bool = True,
    training: bool = False,
) -> FlopCount:
    """Count the multiply-adds and FLOPs of one forward pass of ``model`` on ``example_input``.

    The counts cover the whole batch (``example_input``'s first dimension). The model runs
    wherever it and the input are: on the meta device nothing is computed (and fvcore, which
    needs real tensors, is skipped with a reason in ``fvcore_error``).

    While counting, the model is put in eval mode (or training mode with ``training=True``),
    gradients are off and the MHA fast path is disabled; afterwards every submodule's mode, the
    fast-path setting and (after a training-mode count) the buffers are as they were.

    Args:
        model: the network.
        example_input: one input batch.
        name: the model's name; a zoo name at the zoo's native input size also fills in
            ``published_macs``.
        with_fvcore: also count with fvcore, for the cross-check (costs a traced forward pass).
        training: count in training mode. MACs are the same; fvcore's BatchNorm estimate is not.

    Raises:
        Exception: whatever the model's forward pass raises. An fvcore failure is not raised; it
            is recorded in ``fvcore_error``.
    """
    mapping = extra_flop_formulas()
    counted_ops = set(flop_registry) | set(mapping)
    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    fvcore_macs: int | None = None
    fvcore_extra: dict[str, int] = {}
    fvcore_error: str | None = None
    with (
        _mha_fastpath_disabled(),
        _model_mode(model, training=training),
        _buffers_preserved(model) if training else nullcontext(),
        torch.no_grad(),
    ):
        with recorder, counter:
            model(example_input)
        by_op_flops = counter.get_flop_counts().get("Global", {})
        macs_by_op = {str(op): flops // 2 for op, flops in by_op_flops.items()}
        uncounted = {
            f"flop_counter:{packet}": n
            for packet, n in recorder.seen.items()
            if packet not in counted_ops and is_mac_like_op(str(packet))
        }
        if not with_fvcore:
            fvcore_error = "not requested"
        elif example_input.device.type == "meta":
            fvcore_error = "fvcore traces with real tensors; the input is on the meta device"
        else:
            try:
                fvcore_macs, fvcore_extra, unsupported = _fvcore_counts(model, example_input)
                uncounted.update({f"fvcore:{op}": n for op, n in unsupported.items()})
            # fvcore is a cross-check: its failure (not installed, a model its tracer cannot
            # follow) is reported with the count, never allowed to lose the count itself.
            except Exception as exc:
                fvcore_error = f"{type(exc).__name__}: {exc}"

    input_shape = tuple(int(d) for d in example_input.shape)
    macs = sum(macs_by_op.values())
    return FlopCount(
        model=name,
        input_shape=input_shape,
        macs=macs,
        flops=2 * macs,
        macs_by_op=macs_by_op,
        fvcore_macs=fvcore_macs,
        fvcore_extra_counts=fvcore_extra,
        fvcore_error=fvcore_error,
        published_macs=_published_for(name, input_shape),
        uncounted_ops=uncounted,
        training=training,
    )


def count_zoo_model(
    model: str | ZooEntry, *, batch: int = 1, with_fvcore: bool = False
) -> FlopCount:
    """Count a zoo model at its native input size.

    Without fvcore the model is built and counted on the meta device: no weights, no arithmetic,
    well under a second even for ViT-H/14. With fvcore it is built on the CPU (random weights)
    and both counters run real forward passes, which takes as long as the model's inference.

    Args:
        model: a zoo name (its ``DEFAULT`` entry) or a ``ZooEntry``.
        batch: input batch size; counts cover the whole batch.
        with_fvcore: also run fvcore's cross-check (CPU).

    Raises:
        UnknownModelError: the name is not in the zoo.
        ModelBuildError: torchvision failed to construct the model.
        ValueError: ``batch`` is below 1.
    """
    entry = zoo_entry(model) if isinstance(model, str) else model
    device = "cpu" if with_fvcore else "meta"
    example = example_input(entry, batch=batch, device=device)
    network = build_model(entry, device=device)
    count = count_flops(network, example, name=entry.name, with_fvcore=with_fvcore)
    # The entry's own figure: a non-DEFAULT weights entry has its own size and published count.
    published = None if entry.published_macs is None else entry.published_macs * batch
    return replace(count, published_macs=published)


def count_zoo_models(
    models: Sequence[str | ZooEntry] | None = None, *, batch: int = 1, with_fvcore: bool = False
) -> dict[str, FlopCount | Exception]:
    """Count several zoo models; one that fails is reported, never fatal to the rest.

    Args:
        models: names or entries; every zoo model when None.
        batch: input batch size for every model.
        with_fvcore: also run fvcore's cross-check (CPU; slow for large models).

    Returns:
        For each model name, in order: its ``FlopCount``, or the error that stopped it (a
        ``ModelBuildError`` when it failed to construct, ``UnknownModelError`` for a bad name,
        or whatever its forward pass raised).
    """
    results: dict[str, FlopCount | Exception] = {}
    for model in zoo_names() if models is None else models:
        key = model if isinstance(model, str) else model.name
        try:
            results[key] = count_zoo_model(model, batch=batch, with_fvcore=with_fvcore)
        # Per-model isolation is the point of this function: record and go on.
        except Exception as exc:
            results[key] = exc
    return results
