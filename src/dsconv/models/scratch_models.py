"""The from-scratch document's models built only from :mod:`dsconv.scratch` layers.

* ``scratch_cnn``: the from-scratch document's CustomCNN: three 3x3 convs with 16, 32, 64 filters, each followed by
  ReLU and 2x2 max pooling, then two fully connected layers (flatten -> hidden -> classes).
  ``conv=separable`` swaps each conv for a scratch depthwise (``groups=C``) + pointwise pair.
* ``scratch_transformer``: a ViT-style classifier: non-overlapping patch embedding, a learned class
  token, sinusoidal positional encoding, a stack of encoder layers, and a linear head.

The models are made of scratch layers only, so the activation can only be one that has a scratch
twin: the pipeline's ``act_layer`` must build ``nn.ReLU`` or exact ``nn.GELU`` (or a scratch
``ReLU``/``GELU``); anything else raises ``ConfigError`` instead of being silently replaced.
Attribute names follow the torch.nn twins (``features.<i>``, ``classifier.<i>``, ``encoder.layers``)
so a state_dict can be loaded into an equivalent torch.nn model for checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from dsconv import scratch as S
from dsconv.errors import ConfigError
from dsconv.registry import register_model

ScratchAct = Callable[[], nn.Module]


def scratch_activation(act_layer: Callable[[], nn.Module] | None) -> ScratchAct:
    """Map the pipeline's activation factory to the scratch layer computing the same function."""
    if act_layer is None:
        return S.ReLU
    probe = act_layer()
    if isinstance(probe, S.ReLU | S.GELU):
        return act_layer
    if type(probe) is nn.ReLU:
        return S.ReLU
    if type(probe) is nn.GELU and probe.approximate == "none":
        return S.GELU
    raise ConfigError(
        f"scratch models have scratch ReLU and GELU only; activation {probe!r} has no scratch twin "
        "(use activation=relu or activation=gelu)"
    )


def _conv_block(kind: str, in_ch: int, out_ch: int, kernel_size: int) -> list[nn.Module]:
    padding = kernel_size // 2
    if kind == "standard":
        return [S.Conv2d(in_ch, out_ch, kernel_size, padding=padding)]
    if kind == "separable":
        return [
            S.Conv2d(in_ch, in_ch, kernel_size, padding=padding, groups=in_ch, bias=False),
            S.Conv2d(in_ch, out_ch, 1),
        ]
    raise ConfigError(f"scratch_cnn conv must be 'standard' or 'separable', got {kind!r}")


class ScratchCNN(nn.Module):
    """the from-scratch document's CustomCNN: ``[conv -> ReLU -> maxpool(2)] x 3 -> flatten -> fc -> ReLU -> dropout
    -> fc``."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        hidden: int = 128,
        dropout: float = 0.25,
        conv: str | Sequence[str] = "standard",
        act_layer: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        act = scratch_activation(act_layer)
        channels = list(channels)
        kinds = [conv] * len(channels) if isinstance(conv, str) else list(conv)
        if not channels or len(kinds) != len(channels):
            raise ConfigError(f"scratch_cnn needs one conv kind per stage: {len(channels)} stages, conv={conv!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"scratch_cnn kernel_size must be odd and >= 1, got {kernel_size}")
        self.num_stages = len(channels)
        in_ch, height, width = input_shape
        layers: list[nn.Module] = []
        for kind, out_ch in zip(kinds, channels):
            layers += [*_conv_block(kind, in_ch, out_ch, kernel_size), act(), S.MaxPool2d(2)]
            in_ch, height, width = out_ch, height // 2, width // 2
        if height < 1 or width < 1:
            raise ConfigError(f"input {input_shape} is too small for {len(channels)} 2x2 poolings")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            S.Flatten(),
            S.Linear(in_ch * height * width, hidden),
            act(),
            S.Dropout(dropout),
            S.Linear(hidden, num_classes),
        )
        _init_relu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ScratchViT(nn.Module):
    """Patch-embedding transformer classifier (ViT) for small images such as MNIST."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        norm_first: bool = True,
        pool: str = "cls",
        act_layer: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ConfigError(f"scratch_transformer pool must be 'cls' or 'mean', got {pool!r}")
        if dim % heads:
            raise ConfigError(f"scratch_transformer dim ({dim}) must be divisible by heads ({heads})")
        in_ch, height, width = input_shape
        self.patch_embed = S.PatchEmbedding(in_ch, patch_size, dim)
        try:
            num_patches = self.patch_embed.num_patches(height, width)
        except ValueError as exc:
            raise ConfigError(f"scratch_transformer: {exc}") from exc
        self.pool = pool
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_encoding = S.PositionalEncoding(dim, max_len=num_patches + 1, dropout=dropout)
        layer = S.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=round(dim * mlp_ratio),
            dropout=dropout,
            activation=scratch_activation(act_layer)(),
            batch_first=True,
            norm_first=norm_first,
        )
        # Pre-norm stacks end with a final norm (as in ViT); post-norm layers already end normalised.
        self.encoder = S.TransformerEncoder(layer, depth, norm=S.LayerNorm(dim) if norm_first else None)
        self.head = S.Linear(dim, num_classes)
        _init_transformer(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)  # (N, L, dim)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.encoder(self.pos_encoding(tokens))
        pooled = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)
        return self.head(pooled)


@torch.no_grad()
def _init_relu_net(model: nn.Module) -> None:
    # Same choices as dsconv.models.init for the torch.nn models (Kaiming fan-out convs, Kaiming
    # fan-in linears, zero biases), so scratch and nn twins start from the same distribution.
    for module in model.modules():
        if isinstance(module, S.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, S.Linear):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
        else:
            continue
        if module.bias is not None:
            module.bias.zero_()


@torch.no_grad()
def _init_transformer(model: ScratchViT) -> None:
    # ViT's recipe (timm): truncated-normal(0.02) linear layers and class token, zero biases, and a
    # Xavier-uniform patch projection (as a linear map of the flattened patch), which starts the
    # patch tokens at about the scale of the unit-amplitude sinusoidal positional encoding.
    for module in model.modules():
        if isinstance(module, S.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, S.MultiHeadAttention):
            nn.init.trunc_normal_(module.in_proj_weight, std=0.02)
    proj = model.patch_embed.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.out_channels, -1))
    proj.bias.zero_()
    if model.cls_token is not None:
        nn.init.trunc_normal_(model.cls_token, std=0.02)


# Registered as classes: build_model checks every model.* key against their __init__ signatures.
register_model("scratch_cnn")(ScratchCNN)
register_model("scratch_transformer")(ScratchViT)
