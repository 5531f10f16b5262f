"""The torchvision classification model zoo: names, native input sizes, builders, published MACs.

Every entry comes from the installed torchvision (``list_models(module=torchvision.models)``), so
the zoo follows the torchvision release. Sizes and published counts are read from each model's
``DEFAULT`` weights *metadata*, which ships inside torchvision: nothing is ever downloaded and
every model is built with ``weights=None`` (random weights).

Native input size: the side of the square centre crop in the ``DEFAULT`` weights' evaluation
transforms (``weights.transforms().crop_size``), e.g. EfficientNet-B7 600 px, EfficientNet-V2-M
480 px, Swin-V2 256 px. Where a model has several weights of different sizes, the ``DEFAULT`` one
is the documented choice: ViT-H/14's ``DEFAULT`` is ``IMAGENET1K_SWAG_E2E_V1`` at 518 px (its
``IMAGENET1K_SWAG_LINEAR_V1`` runs at 224 px; ask for it with ``zoo_entry("vit_h_14",
weights="IMAGENET1K_SWAG_LINEAR_V1")``), RegNet-Y-128GF's is SWAG at 384 px.

Published MACs: torchvision's ``Weights.meta["_ops"]``. Its documentation calls the figure
"GFLOPS", but it counts one fused multiply-add as one operation, i.e. it is in **GMACs** per
sample (ResNet-50: 4.089, ViT-B/16: 17.564; the 2-FLOPs-per-MAC counts are 8.18 and 35.13 G).
It is rounded to three decimals, which matters for the smallest models (ShuffleNet-V2-x0.5's
0.040 G carries ±1.25 % of rounding on its own).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.modules import module as nn_module
from torchvision.models import get_model, get_model_weights, list_models

__all__ = [
    "SEED_MODELS",
    "ModelBuildError",
    "UnknownModelError",
    "ZooEntry",
    "build_model",
    "example_input",
    "published_macs",
    "zoo_entries",
    "zoo_entry",
    "zoo_names",
]

#: The models flopwatt's seed scripts measured. The zoo holds every torchvision classification
#: model; this list exists so that a torchvision upgrade that drops one of them is noticed.
SEED_MODELS: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "vit_b_16",
    "vit_b_32",
    "vit_l_16",
    "vit_l_32",
    "vit_h_14",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_s",
    "efficientnet_v2_m",
    "efficientnet_v2_l",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
    "swin_t",
    "swin_s",
    "swin_b",
    "swin_v2_t",
    "swin_v2_s",
    "swin_v2_b",
)


class UnknownModelError(ValueError):
    """A model or weights name that is not in the zoo; the message lists the accepted names."""


class ModelBuildError(RuntimeError):
    """A zoo model that failed to construct. Callers report it and go on with the next model.

    Attributes:
        name: the zoo model name.
        reason: the underlying error, as text.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name!r} failed to construct: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model at its native input size.

    Attributes:
        name: torchvision's registered name (``resnet50``).
        input_size: side of the square input in pixels (H = W), from the weights' transforms.
        weights: name of the weights variant the size and published count come from
            (``IMAGENET1K_V2``); only its metadata is used, never its file.
        published_gmacs: torchvision's published multiply-adds per sample at ``input_size``, in
            GMACs (10⁹ MACs), or None where torchvision publishes none.
        builder_kwargs: architecture arguments the weights imply and ``weights=None`` does not
            set by itself (ViT's ``image_size``, GoogLeNet's ``aux_logits``...).
    """

    name: str
    input_size: int
    weights: str
    published_gmacs: float | None
    builder_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def published_macs(self) -> float | None:
        """Published multiply-adds per sample (MACs, not GMACs), or None."""
        return None if self.published_gmacs is None else self.published_gmacs * 1e9


def zoo_names() -> list[str]:
    """Every torchvision classification model name, sorted."""
    return sorted(list_models(module=torchvision.models))


def _unknown(name: str) -> UnknownModelError:
    return UnknownModelError(f"unknown model {name!r}; accepted: {', '.join(zoo_names())}")


def _builder_kwargs(name: str, weights: Any) -> dict[str, Any]:
    """The architecture arguments that torchvision's builder would take from ``weights``.

    With ``weights=None`` the builders fall back to their own defaults, which differ from the
    weights' architecture for a few models; these mirror what each builder does when given the
    weights (``_ovewrite_named_param`` calls in torchvision), so the counted network is the one
    the published figure describes.
    """
    if name.startswith("vit_"):
        # ViT's position embedding is sized for one resolution: ViT-H/14's DEFAULT is 518 px,
        # while the builder's own default is 224 px.
        return {"image_size": int(weights.meta["min_size"][0])}
    if name.startswith("maxvit_"):
        return {"input_size": tuple(int(v) for v in weights.meta["min_size"])}
    if name in ("googlenet", "inception_v3"):
        # The pretrained models run without their auxiliary heads (the builder drops them after
        # loading) and normalise inputs in the model. init_weights is given explicitly because
        # leaving it unset makes torchvision warn about a future default change.
        return {"aux_logits": False, "transform_input": True, "init_weights": True}
    return {}


def zoo_entry(name: str, *, weights: str | None = None) -> ZooEntry:
    """The zoo entry for one model.

    Args:
        name: a torchvision classification model name (see ``zoo_names()``).
        weights: a weights variant of that model (``IMAGENET1K_SWAG_LINEAR_V1``); default: the
            model's ``DEFAULT`` weights.

    Raises:
        UnknownModelError: ``name`` is not a torchvision classification model, or ``weights`` is
            not one of its weights; the message lists the accepted names.
    """
    if name not in zoo_names():
        raise _unknown(name)
    enum = get_model_weights(name)
    if weights is None:
        chosen = enum.DEFAULT
    else:
        accepted = [member.name for member in enum]
        if weights not in accepted:
            raise UnknownModelError(
                f"unknown weights {weights!r} for {name!r}; accepted: {', '.join(accepted)}"
            )
        chosen = enum[weights]
    crop = chosen.transforms().crop_size
    ops = chosen.meta.get("_ops")
    return ZooEntry(
        name=name,
        input_size=int(crop[0]),
        weights=chosen.name,
        published_gmacs=None if ops is None else float(ops),
        builder_kwargs=_builder_kwargs(name, chosen),
    )


def zoo_entries(names: Sequence[str] | None = None) -> list[ZooEntry]:
    """Zoo entries for ``names`` (in that order), or for every model when None.

    Raises:
        UnknownModelError: a name is not in the zoo; the message lists the accepted names.
    """
    return [zoo_entry(name) for name in (zoo_names() if names is None else names)]


def published_macs(name: str) -> float | None:
    """torchvision's published multiply-adds per sample for ``name`` at its native size.

    Returns:
        MACs (``_ops`` × 10⁹) for the ``DEFAULT`` weights, or None when none is published.

    Raises:
        UnknownModelError: ``name`` is not in the zoo.
    """
    return zoo_entry(name).published_macs


def _to_meta_parameter(_module: nn.Module, _name: str, param: Any) -> Any:
    if param is None:
        return None
    return nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)


def _to_meta_buffer(_module: nn.Module, _name: str, buffer: Any) -> Any:
    return None if buffer is None else buffer.to("meta")


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Put every parameter and buffer registered inside the block on the meta device.

    Why not ``with torch.device("meta")``: some builders compute the architecture with tensors
    (RegNet's block widths end in ``.tolist()``), which a meta default device cannot do. Moving
    each parameter as it is registered keeps that arithmetic on the host, and the weight
    initialisers then run on meta tensors for free, so even RegNet-Y-128GF (645 M parameters)
    builds in a fraction of a second. The hooks are process-global while the block runs.
    """
    param_hook = nn_module.register_module_parameter_registration_hook(_to_meta_parameter)
    buffer_hook = nn_module.register_module_buffer_registration_hook(_to_meta_buffer)
    try:
        yield
    finally:
        param_hook.remove()
        buffer_hook.remove()


def build_model(model: str | ZooEntry, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build a zoo model with random weights (``weights=None``), in eval mode.

    Args:
        model: a zoo name (its ``DEFAULT`` entry) or a ``ZooEntry``.
        device: where the parameters live. ``"meta"`` builds without allocating or initialising
            any weight: shapes only, for counting MACs without computing. Other devices build on
            the CPU (real random initialisation) and move the model there.

    Raises:
        UnknownModelError: the name is not in the zoo.
        ModelBuildError: torchvision failed to construct the model.
    """
    entry = zoo_entry(model) if isinstance(model, str) else model
    target = torch.device(device)
    built: nn.Module
    try:
        if target.type == "meta":
            with _parameters_on_meta():
                built = get_model(entry.name, weights=None, **entry.builder_kwargs)
        else:
            built = get_model(entry.name, weights=None, **entry.builder_kwargs).to(target)
    # torchvision builders can raise anything; the caller needs the model's name with it.
    except Exception as exc:
        raise ModelBuildError(entry.name, f"{type(exc).__name__}: {exc}") from exc
    return built.eval()


def example_input(
    entry: ZooEntry, *, batch: int = 1, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """A random ``(batch, 3, input_size, input_size)`` float32 image batch for ``entry``.

    On the meta device the tensor has a shape and no data.

    Raises:
        ValueError: ``batch`` is below 1.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    shape = (batch, 3, entry.input_size, entry.input_size)
    target = torch.device(device)
    if target.type == "meta":
        return torch.empty(shape, device=target)
    return torch.randn(shape, device=target)
