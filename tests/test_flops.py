"""The model zoo and the FLOP/MAC counter, on real torch, torchvision and fvcore (CPU and meta).

Reference figures: torchvision's published ``_ops`` (GMACs per sample), e.g. ResNet-50 4.089 and
ViT-B/16 17.564, i.e. 8.18 and 35.13 GFLOPs at 2 FLOPs per multiply-add.
"""

from __future__ import annotations

import functools
import importlib.util

import pytest

# The agent's extra (torch, torchvision) is absent from a collector-only install.
pytest.importorskip("torch")
pytest.importorskip("torchvision")

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from flopwatt.agent.jobs.flops import (
    FlopCount,
    count_flops,
    count_zoo_model,
    count_zoo_models,
    extra_flop_formulas,
    is_mac_like_op,
)
from flopwatt.agent.jobs.zoo import (
    SEED_MODELS,
    ModelBuildError,
    UnknownModelError,
    ZooEntry,
    build_model,
    example_input,
    published_macs,
    zoo_entries,
    zoo_entry,
    zoo_names,
)

needs_fvcore = pytest.mark.skipif(
    importlib.util.find_spec("fvcore") is None, reason="fvcore is not installed"
)


@functools.cache
def _meta_count(name: str) -> FlopCount:
    """One meta-device count per zoo model for the whole session (several tests read it)."""
    return count_zoo_model(name)


@functools.cache
def _cpu_model(name: str) -> nn.Module:
    return build_model(name, device="cpu")


@functools.cache
def _cpu_count(name: str) -> FlopCount:
    """A CPU count with the fvcore cross-check (real forward passes)."""
    entry = zoo_entry(name)
    torch.manual_seed(0)
    return count_flops(_cpu_model(name), example_input(entry), name=name)


def _within(value: float, expected: float, rel: float) -> bool:
    return abs(value - expected) <= rel * expected


# --- units --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vit_b_16"])
def test_flops_are_twice_macs(name: str) -> None:
    count = _meta_count(name)
    assert count.flops == 2 * count.macs
    assert count.macs == sum(count.macs_by_op.values())
    assert count.flops_per_sample == 2 * count.macs_per_sample


def test_flop_count_rejects_inconsistent_units() -> None:
    with pytest.raises(ValueError, match="2 × macs"):
        FlopCount(model="x", input_shape=(1,), macs=3, flops=3, macs_by_op={"aten.mm": 3})
    with pytest.raises(ValueError, match="sum of macs_by_op"):
        FlopCount(model="x", input_shape=(1,), macs=3, flops=6, macs_by_op={"aten.mm": 2})


def test_relative_difference() -> None:
    count = FlopCount(
        model="x",
        input_shape=(2, 3, 8, 8),
        macs=110,
        flops=220,
        macs_by_op={"aten.mm": 110},
        fvcore_macs=100,
        published_macs=None,
    )
    assert count.relative_difference("fvcore") == pytest.approx(0.10)
    assert count.relative_difference("published") is None
    assert count.batch == 2
    assert count.macs_per_sample == 55
    with pytest.raises(ValueError, match="accepted: fvcore, published"):
        count.relative_difference("seed")  # type: ignore[arg-type]


# --- the three reference models, real forward passes on the CPU ---------------------------------


@needs_fvcore
def test_resnet50_on_cpu() -> None:
    count = _cpu_count("resnet50")
    assert _within(count.flops, 8.18e9, 0.01)
    assert count.macs_by_op.keys() == {"aten.convolution", "aten.addmm"}
    # fvcore's own total adds its BatchNorm (2 per element in eval mode) and pooling estimates.
    assert count.fvcore_macs is not None
    fvcore_total = count.fvcore_macs + sum(count.fvcore_extra_counts.values())
    assert _within(fvcore_total, 4.11e9, 0.01)
    assert count.fvcore_extra_counts["batch_norm"] > 0
    # ...none of which is a multiply-add: the matmul-class counts agree exactly.
    assert count.fvcore_macs == count.macs
    diff = count.relative_difference("published")
    assert diff is not None and abs(diff) < 1e-3
    assert count.uncounted_mac_ops == {}
    assert count.fvcore_error is None


@needs_fvcore
def test_resnet18_on_cpu() -> None:
    count = _cpu_count("resnet18")
    assert _within(count.macs, 1.814e9, 0.01)
    assert count.fvcore_macs == count.macs
    assert count.uncounted_mac_ops == {}


@needs_fvcore
def test_vit_b_16_on_cpu_counts_attention() -> None:
    count = _cpu_count("vit_b_16")
    assert _within(count.flops, 35.13e9, 0.01)
    # On the CPU the attention runs in the CPU flash kernel, which only our formula counts.
    assert count.macs_by_op["aten._scaled_dot_product_flash_attention_for_cpu"] > 0
    # fvcore agrees once it has an SDPA handle (without it: 16.87 G, attention missing).
    assert count.fvcore_macs == count.macs
    assert "scaled_dot_product_attention" not in str(count.uncounted_ops)
    assert count.fvcore_extra_counts.keys() == {"layer_norm"}
    # The meta-device count sees the same multiply-adds (there SDPA decomposes into bmm).
    assert _meta_count("vit_b_16").macs == count.macs


def test_plain_flop_counter_misses_vit_attention_on_the_fast_path() -> None:
    """Why the counter disables the MHA fast path: PyTorch's FlopCounterMode alone, under
    no_grad, sees one fused ``_native_multi_head_attention`` per layer and counts none of it."""
    model = _cpu_model("vit_b_16")
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(True)
    try:
        with FlopCounterMode(display=False) as plain, torch.no_grad():
            model(example_input(zoo_entry("vit_b_16")))
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    assert _within(plain.get_total_flops(), 22.54e9, 0.01)
    assert _within(_meta_count("vit_b_16").flops, 35.13e9, 0.01)


# --- side effects: fast path, modes, buffers ----------------------------------------------------


@pytest.mark.parametrize("setting", [True, False])
def test_fast_path_setting_is_restored(setting: bool) -> None:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(setting)
    try:
        count_zoo_model("vit_b_32")
        assert torch.backends.mha.get_fastpath_enabled() is setting
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


class _Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward failed")


def test_fast_path_and_mode_restored_when_forward_raises() -> None:
    model = _Fails().train()
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(True)
    try:
        with pytest.raises(RuntimeError, match="forward failed"):
            count_flops(model, torch.zeros(1), with_fvcore=False)
        assert torch.backends.mha.get_fastpath_enabled()
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    assert model.training


def test_mixed_submodule_modes_are_restored() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    model[2].eval()
    count = count_flops(model, torch.randn(3, 4), with_fvcore=False)
    assert [m.training for m in model] == [True, True, False]
    assert model.training
    assert count.macs == 3 * (4 * 4 + 4 * 2)


@needs_fvcore
def test_batchnorm_train_and_eval_counts_differ_only_in_fvcore_extras() -> None:
    """fvcore estimates BatchNorm at 5 operations per element in training mode and 2 in eval
    mode; neither ever reaches the multiply-adds."""
    model = _cpu_model("resnet18")
    x = example_input(zoo_entry("resnet18"))
    bn1 = model.get_submodule("bn1")
    assert isinstance(bn1, nn.BatchNorm2d) and bn1.running_mean is not None
    running_mean = bn1.running_mean.clone()
    evaluation = count_flops(model, x, name="resnet18")
    training = count_flops(model, x, name="resnet18", training=True)
    assert training.training and not evaluation.training
    bn_train = training.fvcore_extra_counts["batch_norm"]
    bn_eval = evaluation.fvcore_extra_counts["batch_norm"]
    assert bn_train * 2 == bn_eval * 5
    assert training.macs == evaluation.macs == training.fvcore_macs == evaluation.fvcore_macs
    assert "batch_norm" not in str(training.macs_by_op)
    # Counting left the model as it found it: eval mode, running statistics untouched.
    assert not model.training
    assert torch.equal(bn1.running_mean, running_mean)


# --- batch, coverage, formulas ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "vit_b_16"])
def test_counts_scale_linearly_with_batch(name: str) -> None:
    one = _meta_count(name)
    four = count_zoo_model(name, batch=4)
    assert four.batch == 4
    assert four.macs == 4 * one.macs
    assert four.flops == 4 * one.flops
    assert four.macs_per_sample == one.macs
    assert one.published_macs is not None and four.published_macs == 4 * one.published_macs


def test_meta_count_skips_fvcore_with_a_reason() -> None:
    count = count_flops(
        build_model("resnet18", device="meta"),
        example_input(zoo_entry("resnet18"), device="meta"),
        name="resnet18",
    )
    assert count.fvcore_macs is None
    assert count.fvcore_error is not None and "meta" in count.fvcore_error
    assert count.published_macs == published_macs("resnet18")


def test_published_figure_only_at_the_native_size() -> None:
    count = count_flops(
        build_model("resnet18", device="meta"),
        torch.empty(1, 3, 160, 160, device="meta"),
        name="resnet18",
    )
    assert count.published_macs is None
    assert count.relative_difference("published") is None


class _DirectFusedAttention(nn.Module):
    """Calls the fused MHA kernel itself, which no counter has a formula for."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = torch._native_multi_head_attention(
            x,
            x,
            x,
            16,
            2,
            self.mha.in_proj_weight,
            self.mha.in_proj_bias,
            self.mha.out_proj.weight,
            self.mha.out_proj.bias,
            need_weights=False,
        )
        return out


def test_uncounted_mac_like_ops_are_reported() -> None:
    count = count_flops(_DirectFusedAttention().eval(), torch.randn(2, 5, 16), with_fvcore=False)
    assert count.uncounted_mac_ops == {"flop_counter:aten._native_multi_head_attention": 1}
    assert count.macs == 0


def test_attention_formula_on_cpu() -> None:
    """SDPA on the CPU, with L ≠ S and E ≠ Ev so each term of B·H·L·S·(E + Ev) shows."""

    class Attention(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            k = torch.randn(2, 3, 7, 8)
            v = torch.randn(2, 3, 7, 4)
            return nn.functional.scaled_dot_product_attention(q, k, v)

    count = count_flops(Attention(), torch.randn(2, 3, 5, 8), with_fvcore=False)
    assert count.macs == 2 * 3 * 5 * 7 * (8 + 4)
    assert count.uncounted_ops == {}


def test_matrix_vector_formulas() -> None:
    class MatVec(nn.Module):
        def forward(self, m: torch.Tensor) -> torch.Tensor:
            v = torch.ones(6)
            return torch.mv(m, v) + torch.dot(v, v)

    count = count_flops(MatVec(), torch.randn(5, 6), with_fvcore=False)
    assert count.macs_by_op == {"aten.mv": 5 * 6, "aten.dot": 6}


def test_extra_formulas_cover_the_cpu_attention_kernel() -> None:
    names = {str(op) for op in extra_flop_formulas()}
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in names


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("aten.convolution", True),
        ("aten::_convolution", True),
        ("aten.bmm", True),
        ("aten.baddbmm", True),
        ("linear", True),
        ("aten._native_multi_head_attention", True),
        ("aten._transformer_encoder_layer_fwd", True),
        ("aten.mv", True),
        ("aten::add_", False),
        ("aten.gelu", False),
        ("aten::upsample_bilinear2d", False),
        ("aten.mvlgamma", False),
        ("aten::max_pool2d", False),
    ],
)
def test_is_mac_like_op(op: str, expected: bool) -> None:
    assert is_mac_like_op(op) is expected


# --- the zoo ------------------------------------------------------------------------------------


def test_zoo_holds_the_seed_models() -> None:
    assert set(SEED_MODELS) <= set(zoo_names())


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet50", 224),
        ("inception_v3", 299),
        ("efficientnet_b7", 600),
        ("efficientnet_v2_m", 480),
        ("swin_v2_t", 256),
        ("vit_h_14", 518),  # DEFAULT = IMAGENET1K_SWAG_E2E_V1
        ("regnet_y_128gf", 384),
    ],
)
def test_native_input_sizes(name: str, size: int) -> None:
    assert zoo_entry(name).input_size == size


def test_non_default_weights_variant() -> None:
    entry = zoo_entry("vit_h_14", weights="IMAGENET1K_SWAG_LINEAR_V1")
    assert entry.input_size == 224
    assert entry.builder_kwargs == {"image_size": 224}
    count = count_zoo_model(entry)
    assert entry.published_gmacs is not None
    assert count.published_macs == entry.published_gmacs * 1e9
    assert _within(count.macs, entry.published_gmacs * 1e9, 0.01)


def test_unknown_names_list_the_accepted_ones() -> None:
    with pytest.raises(UnknownModelError, match=r"accepted: .*resnet50"):
        zoo_entries(["resnet50", "resnet9000"])
    with pytest.raises(UnknownModelError, match="accepted: IMAGENET1K_V1"):
        zoo_entry("resnet18", weights="IMAGENET22K")


def test_build_model_is_in_eval_mode_on_the_requested_device() -> None:
    model = build_model("regnet_y_400mf", device="meta")
    assert not model.training
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} == {"meta"}


def test_example_input_rejects_empty_batch() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        example_input(zoo_entry("resnet18"), batch=0)


def test_a_model_that_fails_to_construct_is_reported_not_fatal() -> None:
    # A 225 px ViT-B/16 is not a multiple of its 16 px patches: torchvision refuses to build it.
    broken = ZooEntry("vit_b_16", 225, "custom", None, {"image_size": 225})
    results = count_zoo_models([broken, "resnet18", "no_such_model"])
    assert list(results) == ["vit_b_16", "resnet18", "no_such_model"]
    assert isinstance(results["vit_b_16"], ModelBuildError)
    assert "vit_b_16" in str(results["vit_b_16"])
    assert isinstance(results["resnet18"], FlopCount)
    assert isinstance(results["no_such_model"], UnknownModelError)
    with pytest.raises(ModelBuildError, match="vit_b_16"):
        build_model(broken, device="meta")


# torchvision rounds `_ops` to 1e-3 GMACs. For the smallest model that rounding alone is ±1.25 %.
_OFF_BY_ROUNDING = {
    "shufflenet_v2_x0_5": (
        "published 0.040 GMACs is rounded to three decimals; the network has 0.040476 GMACs "
        "(conv 0.039452 + classifier 0.001024), +1.19 %, which rounds to the published 0.040 "
        "(see test_counts_round_to_the_published_figure)"
    ),
}


def _zoo_param(name: str) -> object:
    reason = _OFF_BY_ROUNDING.get(name)
    if reason is None:
        return name
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason))


def _zoo_count_or_fail(name: str) -> FlopCount:
    try:
        return _meta_count(name)
    except ModelBuildError as exc:
        pytest.fail(f"zoo model did not construct: {exc}")


@pytest.mark.parametrize("name", [_zoo_param(name) for name in zoo_names()])
def test_zoo_model_within_one_percent_of_published(name: str) -> None:
    count = _zoo_count_or_fail(name)
    assert count.published_macs is not None, f"{name}: torchvision publishes no _ops"
    diff = count.relative_difference("published")
    assert diff is not None and abs(diff) <= 0.01, count.summary()


@pytest.mark.parametrize("name", zoo_names())
def test_counts_round_to_the_published_figure(name: str) -> None:
    """Stronger than 1 % for large models and the honest check for tiny ones: rounded as
    torchvision rounds (1e-3 GMACs), the count is the published figure exactly."""
    count = _zoo_count_or_fail(name)
    entry = zoo_entry(name)
    assert round(count.macs / 1e9, 3) == entry.published_gmacs, count.summary()
    assert count.uncounted_mac_ops == {}, count.summary()
