"""A test-only PyTorch REVE (brain-bzh/reve-base architecture), the reference
the C front end (and later the full C model) is compared against.

Structure and module names follow the published model code, as the seed
notebook walks them:

    model.to_patch_embedding[0]          Linear(patch_size, D) with bias
    model.fourier4d                      FourierEmb4D(D, freqs), .add_time_patch(pos, P)
    model.mlp4d                          Linear(4, D, bias=False) -> GELU -> LayerNorm(D)
    model.ln                             LayerNorm(D)
    model.transformer.layers[i][0]       Attention: norm (RMSNorm), to_qkv, to_out
    model.transformer.layers[i][1].net   RMSNorm, Linear(D, 2*mlp_dim), GEGLU, Linear(mlp_dim, D)

forward(eeg [B, C, T], pos [B, C, 3]) -> [B, C, P, D], P = (T - patch) // step + 1.

Where this follows /work/shared/DESIGN.md rather than memory of the published
code (noted for the integrator):
  * FourierEmb4D keeps the first D/2 phases for every D (the published code
    slices only when D != 512, which is the same thing when freqs**4 == 256);
    freqs**4 < D/2 is rejected here instead of silently giving a wrong width.
  * No attention-pooling / classification head: the encoder output is the
    last residual stream reshaped to [B, C, P, D] (no final norm).
  * RMSNorm eps 1e-6 with a learned weight, LayerNorms eps 1e-5 (torch default).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class GEGLU(nn.Module):
    """Split the last axis into (value, gate); return value * gelu(gate) (exact erf GELU)."""

    def forward(self, x):
        x, gates = x.chunk(2, dim=-1)
        return F.gelu(gates) * x


class FeedForward(nn.Module):
    """Pre-RMSNorm gated feed-forward block: net = RMSNorm, W1, GEGLU, W2."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, hidden_dim * 2, bias=False),
            GEGLU(),
            nn.Linear(hidden_dim, dim, bias=False),
        )

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    """Pre-RMSNorm bidirectional multi-head attention with a fused bias-free QKV."""

    def __init__(self, dim, heads=8, dim_head=64):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x):
        x = self.norm(x)
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        b, n, _ = q.shape
        q, k, v = (t.view(b, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * self.scale
        out = torch.softmax(scores, dim=-1) @ v
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


class TransformerBackbone(nn.Module):
    """depth x [x += attn(x); x += ff(x)], no final norm."""

    def __init__(self, dim, depth, heads, head_dim, mlp_dim):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.ModuleList([Attention(dim, heads, head_dim), FeedForward(dim, mlp_dim)])
            for _ in range(depth)
        ])

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class FourierEmb4D(nn.Module):
    """4-D Fourier features of (x, y, z, t): t scaled by increment_time, margin
    added to all four, freqs**4 phases 2*pi*(fx*x+fy*y+fz*z+ft*t)/(1+2*margin)
    (x slowest, t fastest), first D/2 kept, cat(cos, sin)."""

    def __init__(self, dimension, freqs, increment_time=0.1, margin=0.4):
        super().__init__()
        if dimension % 2 or freqs ** 4 < dimension // 2:
            raise ValueError(f"FourierEmb4D: need even dimension <= 2*freqs**4, got {dimension}, {freqs}")
        self.dimension = dimension
        self.freqs = freqs
        self.increment_time = increment_time
        self.margin = margin

    def forward(self, positions_):
        positions = positions_.clone()
        positions[..., -1] *= self.increment_time
        *lead, _ = positions.shape
        freqs_w = torch.arange(self.freqs).to(positions)
        freqs_z = freqs_w[:, None]
        freqs_y = freqs_z[:, None]
        freqs_x = freqs_y[:, None]
        width = 1 + 2 * self.margin
        positions = positions + self.margin
        p_x = 2 * math.pi * freqs_x / width
        p_y = 2 * math.pi * freqs_y / width
        p_z = 2 * math.pi * freqs_z / width
        p_w = 2 * math.pi * freqs_w / width
        positions = positions[..., None, None, None, None, :]
        loc = (positions[..., 0] * p_x + positions[..., 1] * p_y
               + positions[..., 2] * p_z + positions[..., 3] * p_w).reshape(*lead, -1)
        loc = loc[..., : self.dimension // 2]
        return torch.cat([torch.cos(loc), torch.sin(loc)], dim=-1)

    @classmethod
    def add_time_patch(cls, pos, num_patches):
        """[B, C, 3] -> [B, C*num_patches, 4]: each channel's (x, y, z) repeated with t = 0..P-1."""
        b, c, _ = pos.shape
        rep = pos.unsqueeze(2).repeat(1, 1, num_patches, 1)
        t = torch.arange(num_patches, device=pos.device).to(pos.dtype)
        t = t.view(1, 1, num_patches, 1).expand(b, c, num_patches, 1)
        return torch.cat((rep, t), dim=-1).view(b, c * num_patches, 4)


class Reve(nn.Module):
    """The REVE encoder: patches + 4-D position embedding -> transformer -> [B, C, P, D]."""

    def __init__(self, embed_dim=512, depth=22, heads=8, head_dim=64, mlp_dim_ratio=2.66,
                 freqs=4, patch_size=200, patch_overlap=20):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.overlap_size = patch_overlap
        self.mlp_dim_ratio = mlp_dim_ratio
        self.mlp_dim = int(embed_dim * mlp_dim_ratio)
        self.to_patch_embedding = nn.Sequential(nn.Linear(patch_size, embed_dim))
        self.fourier4d = FourierEmb4D(embed_dim, freqs)
        self.mlp4d = nn.Sequential(nn.Linear(4, embed_dim, bias=False), nn.GELU(),
                                   nn.LayerNorm(embed_dim))
        self.ln = nn.LayerNorm(embed_dim)
        self.transformer = TransformerBackbone(embed_dim, depth, heads, head_dim, self.mlp_dim)

    def patches(self, eeg):
        """[B, C, T] -> [B, C, P, patch_size] (overlapping windows, partial last one dropped)."""
        return eeg.unfold(2, self.patch_size, self.patch_size - self.overlap_size)

    def embed(self, eeg, pos):
        """The residual stream input [B, C*P, D] and its parts, as a dict."""
        patches = self.patches(eeg)
        b, c, h, _ = patches.shape
        patch_emb = self.to_patch_embedding(patches).reshape(b, c * h, self.embed_dim)
        pos4 = self.fourier4d.add_time_patch(pos, h)
        pos_expand = self.mlp4d(pos4)
        pos_fourier = self.fourier4d(pos4)
        pos_embed = self.ln(pos_fourier + pos_expand)
        return dict(patches=patches, patch_emb=patch_emb, pos4=pos4, pos_expand=pos_expand,
                    pos_fourier=pos_fourier, pos_embed=pos_embed, x=patch_emb + pos_embed)

    def forward(self, eeg, pos):
        e = self.embed(eeg, pos)
        b, c, h, _ = e["patches"].shape
        x = self.transformer(e["x"])
        return x.reshape(b, c, h, self.embed_dim)


def random_reve(seed=0, scale_norms=True, **cfg):
    """A Reve with seeded random weights; norms get non-trivial weights/biases so
    that parity tests exercise them."""
    torch.manual_seed(seed)
    model = Reve(**cfg)
    if scale_norms:
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, (nn.LayerNorm, RMSNorm)):
                    mod.weight.uniform_(0.5, 1.5)
                    if getattr(mod, "bias", None) is not None:
                        mod.bias.uniform_(-0.2, 0.2)
    return model.eval()


def save_pretrained(model, directory):
    """Write ``config.json`` + ``model.safetensors`` for a reference Reve, with the
    published parameter names (``to_patch_embedding.0.weight``,
    ``transformer.layers.{i}.0.to_qkv.weight``, ...) and config fields named as the
    seed reads them (``embed_dim``, ``depth``, ``heads``, ``head_dim``,
    ``mlp_dim_ratio``, ``freqs``, ``patch_size``, ``patch_overlap``). The exact field
    set of brain-bzh/reve-base's config.json is an assumption (no hub access here)."""
    import json
    import os

    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    attn = model.transformer.layers[0][0] if len(model.transformer.layers) else None
    cfg = {
        "model_type": "reve",
        "embed_dim": model.embed_dim,
        "depth": len(model.transformer.layers),
        "heads": attn.heads if attn else 8,
        "head_dim": attn.dim_head if attn else 64,
        "mlp_dim_ratio": getattr(model, "mlp_dim_ratio", model.mlp_dim / model.embed_dim),
        "use_geglu": True,
        "freqs": model.fourier4d.freqs,
        "patch_size": model.patch_size,
        "patch_overlap": model.overlap_size,
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              os.path.join(directory, "model.safetensors"))
    return directory


def seed_hooks(model, n_layers):
    """The seed notebook's hooks, verbatim (Part 5): a forward hook on every `to_qkv` storing
    its output and one on every feed-forward `net` re-running net[0..3] on its input.
    Works on the reference and on mechinterp_c's module tree; returns (activations, handles)."""
    activations = {}

    # attention hooks
    def implant_hook_at(layer_number):
        def hook_at(module, input, output):
            activations[f'at_{layer_number}_qkv'] = output.detach()
        return hook_at

    # MLP hooks
    def implant_hook_ff(layer_number):
        def hook_ff(module, input, output):

            # calculate
            I = input[0]        # layer input
            X1 = module[0](I)   # RMSnorm
            X2 = module[1](X1)  # expansion
            X3 = module[2](X2)  # geglu
            X4 = module[3](X3)  # contraction (projection)

            # and store
            activations[f'ff_{layer_number}_0'] = X1.detach().numpy()
            activations[f'ff_{layer_number}_1'] = X2.detach().numpy()
            activations[f'ff_{layer_number}_2'] = X3.detach().numpy()
            activations[f'ff_{layer_number}_3'] = X4.detach().numpy()
        return hook_ff

    # surgeries
    handles = []
    for i in range(n_layers):

        # implant attention hooks
        module = model.transformer.layers[i][0].to_qkv
        h = module.register_forward_hook(implant_hook_at(i))
        handles.append(h)

        # implant feedforward hooks
        module = model.transformer.layers[i][1].net
        h = module.register_forward_hook(implant_hook_ff(i))
        handles.append(h)
    return activations, handles
