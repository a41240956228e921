"""Test-only attention reference in torch, as TransformerLens computes it."""
import numpy as np
import torch


def attention_torch(q, k, v, causal, pad=None):
    """(z, pattern) for q, k, v tensors [B, T, H, D]: scores / sqrt(D), -inf where
    masked (causal, and padded keys where ``pad`` [B, T] is 0), softmax, NaN rows
    (every key masked) -> 0. Differentiable: gradients flow to q, k and v."""
    B, T, H, D = q.shape
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
    keep = torch.ones(B, 1, T, T, dtype=torch.bool)
    if causal:
        keep = keep & torch.tril(torch.ones(T, T, dtype=torch.bool))
    if pad is not None:
        keep = keep & torch.tensor(pad, dtype=torch.bool)[:, None, None, :]
    pattern = torch.softmax(scores.masked_fill(~keep, -torch.inf), -1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", pattern, v), pattern
