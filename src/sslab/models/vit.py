"""Vision Transformer (Dosovitskiy et al., ICLR 2021) as DeiT/DINO use it, without timm or torchvision.

image (B, C, H, W) -> patches of p x p pixels, each a Linear to `dim` (a conv with stride p) -> a learned CLS token
in front -> + learned position embeddings -> `depth` pre-norm blocks
    x = x + Attn(LN(x)),   x = x + MLP(LN(x))     (multi-head self-attention; MLP dim -> 4 dim -> dim with GELU)
-> LN -> the CLS token is the feature vector (out_dim = dim).

Sizes (DeiT, and DINO's `vit_tiny`/`vit_small`): `vit-tiny` dim 192, 12 blocks, 3 heads; `vit-small` dim 384,
12 blocks, 6 heads. Patch size: 16 above 64 px (ImageNet's 224 px gives 14 x 14 patches, 96 px gives 6 x 6), 4 at
64 px and below (32 px gives 8 x 8 patches, as CIFAR ViTs use 4 x 4 patches; 16 px would give a single patch).
An image side not a multiple of p drops the last partial row and column of patches, as the strided conv does.

Position embeddings are learned for the training size's grid; an input of another size (multi-crop's small local
views) gets them resampled bicubically to its grid (DINO's `interpolate_pos_encoding`), the CLS token's unchanged.

Parameter names are timm's `VisionTransformer` (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.norm1`,
`blocks.N.attn.qkv`, `blocks.N.attn.proj`, `blocks.N.norm2`, `blocks.N.mlp.fc1`, `blocks.N.mlp.fc2`, `norm`), and
the computation is timm's (LayerNorm eps 1e-6, qkv with bias, exact GELU, CLS pooling), so `sslab export --format
timm` loads into `timm.create_model("vit_tiny_patch16_224", img_size=..., patch_size=..., num_classes=0)`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.errors import ConfigError
from sslab.registry import BACKBONES

SMALL_IMAGE_MAX = 64  # images up to this side use 4 x 4 patches, larger ones 16 x 16
LN_EPS = 1e-6  # timm's and DINO's partial(nn.LayerNorm, eps=1e-6)


def default_patch_size(image_size: int) -> int:
    return 4 if image_size <= SMALL_IMAGE_MAX else 16


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B x C x H x W -> B x (h * w) x dim


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v: each B x heads x N x (dim / heads)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_head)): B x heads x N x N (what `forward` computes, made explicit)."""
        q, k, _ = self.qkv_heads(x)
        return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv_heads(x)
        out = F.scaled_dot_product_attention(q, k, v)  # B x heads x N x d_head
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Backbone: (B, C, H, W) -> (B, dim), the CLS token after the last LayerNorm. No classifier."""

    def __init__(self, image_size: int = 32, in_channels: int = 3, patch_size: int | None = None, dim: int = 192,
                 depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size = patch_size or default_patch_size(image_size)
        if image_size < self.patch_size:
            raise ConfigError(f"a ViT with {self.patch_size} x {self.patch_size} patches needs images of at least "
                              f"{self.patch_size} px, not {image_size}")
        if dim % heads:
            raise ConfigError(f"ViT width {dim} is not a multiple of its {heads} heads")
        self.image_size, self.heads, self.out_dim = image_size, heads, dim
        self.grid = image_size // self.patch_size  # patches per side at the training size
        self.patch_embed = PatchEmbed(in_channels, dim, self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():  # DINO's / timm's _init_weights
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def stages(self) -> dict[str, nn.Module]:
        """The named stages (the transformer blocks; their outputs are tokens, B x 1+N x dim), for hooks. `sslab
        attention` draws a ViT's CLS attention per head instead of channel-mean maps (`cls_attention`)."""
        return {f"block{i + 1}": block for i, block in enumerate(self.blocks)}

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h * w, dim): the learned table, its patch part resampled bicubically for an h x w grid."""
        if h == w == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = patch_pos.shape[-1]
        grid = patch_pos.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)  # 1 x dim x g x g
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The token sequence entering the first block: B x (1 + h * w) x dim."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = self.patch_embed(x)  # B x (h * w) x dim
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        for block in self.blocks:
            t = block(t)
        return self.norm(t)[:, 0]  # B x dim: the CLS token

    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor, block: int = -1) -> torch.Tensor:
        """Block `block`'s (default: the last) self-attention of the CLS token to every patch, per head:
        B x heads x h x w (each head's weights sum to 1 with the CLS token's own, which is left out). DINO's figure."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        block = block % len(self.blocks)
        t = self.tokens(x)
        for earlier in self.blocks[:block]:
            t = earlier(t)
        chosen = self.blocks[block]
        weights = chosen.attn.attention_weights(chosen.norm1(t))  # B x heads x N x N
        return weights[:, :, 0, 1:].reshape(x.shape[0], self.heads, h, w)


def _vit(image_size: int, in_channels: int, dim: int, heads: int) -> VisionTransformer:
    return VisionTransformer(image_size, in_channels, default_patch_size(image_size), dim=dim, depth=12, heads=heads)


@BACKBONES.register("vit-tiny")
def vit_tiny(in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> VisionTransformer:
    """ViT-Tiny (DeiT-Ti): dim 192, 12 blocks, 3 heads; 5.5 M parameters at 224 px."""
    return _vit(image_size, in_channels, dim=192, heads=3)


@BACKBONES.register("vit-small")
def vit_small(in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> VisionTransformer:
    """ViT-Small (DeiT-S): dim 384, 12 blocks, 6 heads; 21.7 M parameters at 224 px."""
    return _vit(image_size, in_channels, dim=384, heads=6)

