# %% [markdown]
# # No Position Experiment
#
# Port of the seed notebook *"No Position Experiment"* (the companion notebook of Neel
# Nanda's real-time research video) to `mechinterp_c`: a 2-layer, 1-head transformer
# with no positional embedding is trained **in C** (backward pass, AdamW, warm-up
# schedule, gradient clipping, frozen `W_pos`) to predict the *previous* token, and
# then analysed: attention patterns from `run_with_cache`, direct logit contributions,
# the `W_E @ W_Q ...` QK and OV circuits, the LayerNorm-folded model, MLP activations,
# and the mean ablation of every hook point (one `analysis.mean_ablation_sweep` call
# instead of the seed's `run_with_hooks` loop, which is also run on a few points to show
# they agree). NumPy + matplotlib only: no torch, no plotly.
#
# The seed trains 4000 steps of batch 256; with `MI_NOTEBOOK_SMALL=1` this notebook
# trains 150 steps of batch 64 and analyses 500 sequences instead of 4000
# (`MI_NOTEBOOK_STEPS=N` sets the number of steps either way). Figures go
# to `$MI_NOTEBOOK_FIGDIR` when set, key numbers to the JSON file `$MI_NOTEBOOK_OUT`
# (and the weights and token batches to the `.npz` next to it).

# %% [markdown]
# # Step 1: Setup

# %%
import json
import os
import sys
import time

import numpy as np
import matplotlib.pyplot as plt

import mechinterp_c
from mechinterp_c import HookedTransformer, HookedTransformerConfig, analysis, checkpoints, optim
from mechinterp_c.utils import to_numpy

FIGDIR = os.environ.get("MI_NOTEBOOK_FIGDIR")
SMALL = checkpoints.is_small()
PROGRESS = bool(os.environ.get("MI_NOTEBOOK_PROGRESS"))
results = {}
_fig_count = [0]


def _save_and_show(name):
    """Save the current figure into $MI_NOTEBOOK_FIGDIR (when set), then show it inline."""
    if FIGDIR:
        os.makedirs(FIGDIR, exist_ok=True)
        _fig_count[0] += 1
        plt.savefig(os.path.join(FIGDIR, f"no_position_{_fig_count[0]:02d}_{name}.png"), dpi=80,
                    bbox_inches="tight")
    plt.show()

# %% [markdown]
# Some plotting code: matplotlib stand-ins for the seed's plotly wrappers.

# %%
def _slug(s):
    return "".join(c if c.isalnum() else "_" for c in s.lower()).strip("_")[:60] or "figure"


def line(tensor, line_labels=None, yaxis="", xaxis="", title="", hover_name=None, **kwargs):
    """One line per column of a 2-D array (or one line for a 1-D one), as px.line."""
    y = np.asarray(to_numpy(tensor))
    plt.figure(figsize=(9, 3.5))
    lines = plt.plot(y)
    if line_labels:
        for l, label in zip(lines, line_labels):
            l.set_label(label)
        plt.legend(fontsize=8)
    if hover_name is not None:     # the seed's hover text becomes tick labels
        plt.xticks(range(len(hover_name)), hover_name, rotation=90, fontsize=7)
    plt.gca().set(xlabel=xaxis, ylabel=yaxis, title=title)
    plt.tight_layout()
    _save_and_show(_slug(title or "line"))


def imshow(tensor, yaxis="", xaxis="", title="", **kwargs):
    """A heat map with the seed's diverging RdBu scale centred at 0."""
    a = np.asarray(to_numpy(tensor), dtype=np.float64)
    vmax = float(np.nanmax(np.abs(a))) or 1.0
    plt.figure(figsize=(5.5, 4.5))
    plt.imshow(a, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
    plt.colorbar()
    plt.gca().set(xlabel=xaxis, ylabel=yaxis, title=title)
    plt.tight_layout()
    _save_and_show(_slug(title or "imshow"))

# %% [markdown]
# # Step 2: Model Initialization
#
# 2 layers, d_model 64, one head of 64, d_mlp 256, vocabulary 300, context 50, ReLU,
# LayerNorm; the positional embeddings are zeroed and frozen.

# %%
cfg = HookedTransformerConfig(
    n_layers=2,
    d_model=64,
    d_head=64,
    n_heads=1,
    d_mlp=256,
    d_vocab=300,
    n_ctx=50,
    act_fn="relu",
    normalization_type="LN",
    seed=0,
)
model = HookedTransformer(cfg)

def deactivate_position(model):
    # Zero out the positional embeddings and disable gradient updates
    model.pos_embed.W_pos[:] = 0.0
    model.get_parameter("pos_embed.W_pos").requires_grad = False


deactivate_position(model)

# %%
# Print the model to verify configuration
print(model)

# Check positional embeddings
print("Positional embeddings:", model.pos_embed.W_pos)

# %% [markdown]
# # Step 3: Data Generation
#
# Random tokens in 1..299 with a BOS token 0 first, from a seeded generator (NumPy's
# instead of torch's, so the exact batches differ from the seed's).

# %%
def make_data_generator(cfg, batch_size, seed=123, incl_bos_token=True):
    rng = np.random.default_rng(seed)
    while True:
        # Generate random tokens between 1 and vocabulary size
        x = rng.integers(1, cfg.d_vocab, (batch_size, cfg.n_ctx))
        if incl_bos_token:
            # Set the first token to the BOS token
            x[:, 0] = 0
        yield x

# Create a data generator with batch size of 2
data_generator = make_data_generator(cfg, batch_size=2)
# Generate a single batch and print it
print(next(data_generator))

# %% [markdown]
# ## Defining the Loss Function
# The logits at position p predict the token at p-1: the negative mean log-probability
# of the previous token.

# %%
def log_softmax(x):
    """log_softmax over the last axis in float64."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def loss_fn(logits, tokens, per_token=False):
    # logit shape: [batch, pos, vocab]
    # token shape: [batch, pos]
    logits = logits[:, 1:]
    tokens = tokens[:, :-1]

    # Compute log probabilities
    log_probs = log_softmax(logits)

    # Gather log probabilities of correct tokens
    correct_log_probs = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]

    # Return token-level or batch-level loss
    if per_token:
        return -correct_log_probs
    else:
        return -correct_log_probs.mean()

# Test the loss function with example logits and tokens
test_tokens = np.arange(5)[None, :]
test_logits = np.random.default_rng(0).standard_normal((1, 5, 10))
test_logits[:, 1, 0] = 10.0
test_logits[:, 2, 1] = 10.0
test_logits[:, 3, 2] = 10.0
test_logits[:, 4, 3] = 10.0
print("Token-level Loss:", loss_fn(test_logits, test_tokens, per_token=True))
print("Batch-level Loss:", loss_fn(test_logits, test_tokens, per_token=False))

# %% [markdown]
# # Step 4: Training the Model
#
# AdamW (lr 1e-4, betas (0.9, 0.95), weight decay 0.1), LambdaLR warm-up
# `min(i / 100, 1)`, gradient clipping at 1.0. `model.backward(tokens, targets)` runs
# forward, cross-entropy and backward in C; `targets[:, p] = tokens[:, p - 1]` and the
# first position is ignored (-100), which is exactly the seed's loss.

# %%
# Training parameters
batch_size = 64 if SMALL else 256
num_epochs = 150 if SMALL else 4000
num_epochs = int(os.environ.get("MI_NOTEBOOK_STEPS", num_epochs))   # optional override
lr = 1e-4
betas = (0.9, 0.95)
max_grad_norm = 1.0
wd = 0.1

# Define optimizer and scheduler (the frozen W_pos is skipped, as torch skips grad-less parameters)
optimizer = optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=wd)
scheduler = optim.LambdaLR(optimizer, lambda i: min(i / 100, 1.0))

initial_state = {k: v.copy() for k, v in model.state_dict().items()}

# %% [markdown]
# ## Model Training

# %%
# Training loop
losses = []
data_loader = make_data_generator(cfg, batch_size)
params = list(model.parameters())
t_start = time.perf_counter()
for epoch in range(num_epochs):
    # Generate a batch of tokens; the logits at p predict tokens[p - 1]
    tokens = next(data_loader)
    targets = np.full_like(tokens, -100)
    targets[:, 1:] = tokens[:, :-1]

    # Forward pass, loss and backpropagation, in C
    optimizer.zero_grad()
    loss = model.backward(tokens, targets)

    # Gradient clipping
    if max_grad_norm is not None:
        optim.clip_grad_norm_(params, max_grad_norm)

    # Optimizer step and scheduler step
    optimizer.step()
    scheduler.step()

    # Track loss
    losses.append(loss)

    # Print loss every 100 epochs
    if epoch % 100 == 0:
        print(f"Epoch {epoch}: Loss = {loss}", flush=True)
        if PROGRESS:   # headless runs (make demo): also on the terminal, as it happens
            print(f"    step {epoch}/{num_epochs}: loss {loss:.4f} "
                  f"({time.perf_counter() - t_start:.0f} s)", file=sys.__stdout__, flush=True)
train_seconds = time.perf_counter() - t_start
print(f"trained {num_epochs} steps of batch {batch_size} in {train_seconds:.1f} s "
      f"({1e3 * train_seconds / num_epochs:.1f} ms/step, {mechinterp_c.get_num_threads()} threads)")
results.update(train_losses=losses, train_seconds=train_seconds, num_epochs=num_epochs,
               batch_size=batch_size)

# Plot the loss curve
line(np.array(losses), xaxis="Epoch", yaxis="Loss", title="Training loss")

# %% [markdown]
# # Step 5: Analyzing Results
#
# ### Verifying Positional Embeddings
# The positional embedding was frozen at zero: its norm must still be 0.

# %%
W_pos_norm = float(np.linalg.norm(model.pos_embed.W_pos))
results['W_pos_norm'] = W_pos_norm
W_pos_norm

# %% [markdown]
# ## Look at attention patterns

# %%
# Generate a large batch of tokens for analysis
big_data_loader = make_data_generator(cfg, 500 if SMALL else 4000)
big_tokens = next(big_data_loader)

# Forward pass with caching of activations (NumPy views into one arena, no copies)
logits, cache = model.run_with_cache(big_tokens)

big_loss = loss_fn(logits, big_tokens)
results['big_loss'] = big_loss
print("Loss:", big_loss)

# %%
print(cache)

# %%
cache["blocks.0.attn.hook_pattern"].shape

# %%
batch_index = 0
tokens = big_tokens[batch_index]

pattern0 = cache["attn", 0].mean((0, 1))
pattern1 = cache["attn", 1].mean((0, 1))
results['mean_pattern'] = [pattern0, pattern1]

# Visualize attention patterns for Layer 0 and Layer 1
imshow(pattern0, title="Layer 0 Attention Pattern", yaxis="Query", xaxis="Key")
imshow(pattern1, title="Layer 1 Attention Pattern", yaxis="Query", xaxis="Key")

# %% [markdown]
# ## Look at how different bits of the model directly contribute to the logits

# %%
# Extract key components from the cache
resid_components = [
    cache["embed"],         # Embedding layer
    cache["attn_out", 0],   # Attention output from Layer 0
    cache["mlp_out", 0],    # MLP output from Layer 0
    cache["attn_out", 1],   # Attention output from Layer 1
    cache["mlp_out", 1],    # MLP output from Layer 1
]
# Component labels for visualization
labels = ["Embedding", "Attention Layer 0", "MLP Layer 0", "Attention Layer 1", "MLP Layer 1"]

# Stack residual components for analysis
resid_stack = np.stack(resid_components, 0)

# Normalize residual components
resid_stack = resid_stack - resid_stack.mean(-1, keepdims=True)

print(resid_stack.shape)

# %%
# Compute contributions to logits
fold_W_U = model.ln_final.w[:, None] * model.unembed.W_U
logit_components = resid_stack[:, batch_index] @ fold_W_U / cache["scale"][batch_index]
print(logit_components.shape)

# %%
# Visualize contributions
logit_components = logit_components - logit_components.mean(-1, keepdims=True)
direct = logit_components[:, np.arange(1, model.cfg.n_ctx), tokens[:-1]].T
results['direct_logit_means'] = direct.mean(0)
line(direct, line_labels=labels, xaxis="Position", yaxis="Logit of the previous token",
     title="Direct logit contributions")

# %% [markdown]
# ## Folding in LayerNorm
# A second model with `LNPre` takes the trained weights with LayerNorm folded in, the
# writing weights centred and the unembedding centred; its log-probabilities equal the
# original model's.

# %%
# Define a new configuration for the analysis model
analysis_cfg = HookedTransformerConfig(
    n_layers=2,
    d_model=64,
    d_head=64,
    n_heads=1,
    d_mlp=256,
    d_vocab=300,
    n_ctx=50,
    act_fn="relu",
    normalization_type="LNPre",# Pre-normalization is used for folding
    init_weights=False,# Do not initialize new weights
)
# Initialize a new model for analysis
analysis_model = HookedTransformer(analysis_cfg)

# Load the state dictionary from the original model and fold LayerNorm
state_dict = model.state_dict()
analysis_model.load_and_process_state_dict(
    state_dict,
    fold_ln=True, # Fold LayerNorm into weights
    center_writing_weights=True, # Center LayerNorm weights
    center_unembed=True # Center the unembedding weights
)

# Deactivate positional embeddings for consistency
deactivate_position(analysis_model)

# %%
# Output the folded model structure (for validation)
print(analysis_model)

# Check if positional embeddings remain deactivated
print("Positional embeddings norm:", np.linalg.norm(analysis_model.pos_embed.W_pos))

# the folded model computes the same loss
folded_loss = loss_fn(analysis_model(big_tokens), big_tokens)
results['folded_loss'] = folded_loss
print("Folded model loss:", folded_loss, " original:", big_loss)

# %% [markdown]
# # Step 6: Understanding Model Behavior
#
# ## Understand Attention in Layer 0

# %%
# Visualize Query-Key interactions for Layer 0
QK = model.W_E @ model.W_Q[0, 0] @ model.W_K[0, 0].T @ model.W_E.T
results['QK0_diag_mean'] = float(np.mean(np.diag(QK)))
imshow(QK, yaxis="Query", xaxis="Key",title="Layer 0: Query-Key Interactions")

# %%
# Visualize Output-Value mapping for Layer 0
OV = model.W_E @ model.W_V[0, 0] @ model.W_O[0, 0] @ model.W_in[0]
imshow(OV, yaxis="Input Vocab", xaxis="Neuron",title="Layer 0: Output-Value Mapping")

# %%
rng = np.random.default_rng(1)
line(OV[:, rng.integers(0, 256, (5,))], xaxis="Input Vocab", title="Layer 0: OV, five random neurons")

# %% [markdown]
# ## Understand MLP in Layer 0

# %%
# Visualize post-activation values for Layer 0
batch_index = 0
imshow(cache["post", 0][batch_index], yaxis="Pos", xaxis="Neuron", title="Layer 0: MLP Activations (Batch)")

# Visualize mean activations across tokens
imshow(cache["post", 0].mean(0), yaxis="Pos", xaxis="Neuron", title="Layer 0: Mean MLP Activations")

# Visualize activation states (active/inactive neurons)
imshow((cache["post", 0] > 0).mean(0), yaxis="Pos", xaxis="Neuron", title="Layer 0: MLP Activation States")

# %% [markdown]
# ## Understand Attention in Layer 1

# %%
# Visualize Query-Key interactions for Layer 1
QK_layer1 = analysis_model.W_E @ analysis_model.W_Q[1, 0] @ analysis_model.W_K[1, 0].T @ analysis_model.W_E.T
imshow(QK_layer1, yaxis="Query", xaxis="Key", title="Attention Layer 1: Query-Key Matrix")

# %%
# Visualize Output-Value mapping for Layer 1
OV_layer1 = analysis_model.W_E @ analysis_model.W_V[1, 0] @ analysis_model.W_O[1, 0] @ analysis_model.W_in[0]
imshow(OV_layer1, yaxis="Input Vocab", xaxis="Neuron", title="Attention Layer 1: Output-Value Matrix")

# %%
line(OV_layer1[:, rng.integers(0, 256, (5,))], xaxis="Input Vocab", title="Attention Layer 1: Random Neuron Outputs")

# %% [markdown]
# ## Understand MLP in Layer 1

# %%
# Visualize post-activation values for Layer 1
imshow(cache["post", 1][batch_index], yaxis="Pos", xaxis="Neuron", title="Layer 1: MLP Activations (Batch)")

# Visualize mean activations across tokens
imshow(cache["post", 1].mean(0), yaxis="Pos", xaxis="Neuron", title="Layer 1: Mean MLP Activations")

# Visualize activation states (active/inactive neurons)
imshow((cache["post", 1] > 0).mean(0), yaxis="Pos", xaxis="Neuron", title="Layer 1: MLP Activation States")

# %% [markdown]
# # Step 7: Experimentation: Activation Replacement
#
# Each hook point's activation is replaced by its mean over the analysis batch (one
# value per position) while a new batch is evaluated; the loss shows what each point
# carries. `analysis.mean_ablation_sweep` does the seed's whole loop in one call.

# %%
# Baseline loss
new_token_batch = next(big_data_loader)
baseline_loss = loss_fn(model(new_token_batch), new_token_batch)
results['baseline_loss'] = baseline_loss
print("Baseline loss:", baseline_loss)

# %%
# Replace activations with their averaged values and compute loss: every hook point
# except hook_pos_embed and hook_result, means from the analysis batch (the seed's cache)
sweep = analysis.mean_ablation_sweep(model, new_token_batch, loss_fn="previous_token",
                                     mean_tokens=big_tokens)
losses = list(sweep.losses)
loss_labels = list(sweep.names)
for hook_name, loss in zip(loss_labels, losses):
    print(hook_name, loss)
results['ablation'] = dict(zip(loss_labels, map(float, losses)))

# %%
# the seed's loop with run_with_hooks, on a few of the points: the same numbers
for hook_name in [loss_labels[0], "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post"]:
    average_act = cache[hook_name].mean(0)

    def replacing_with_average_act(activation, hook):
        activation[:] = average_act[None]
        return activation

    logits = model.run_with_hooks(
        new_token_batch, fwd_hooks=[(hook_name, replacing_with_average_act)]
    )
    seed_loss = loss_fn(logits, new_token_batch)
    print(f"{hook_name}: seed loop {seed_loss:.6f}, sweep {results['ablation'][hook_name]:.6f}")
    assert abs(seed_loss - results['ablation'][hook_name]) <= 1e-3 * max(1.0, seed_loss)

# %%
# Visualize impact of averaged activations
line(np.array(losses), hover_name=loss_labels, yaxis="Loss", title="Mean ablation of every hook point")

# %%
list(cache.cache_dict.keys())

# %%
# key numbers for the test / the record; weights and batches in the .npz next to the JSON
def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return np.where(np.isfinite(x), x.astype(np.float64), None).tolist() if x.dtype.kind == 'f' else x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x

if os.environ.get('MI_NOTEBOOK_OUT'):
    out = os.environ['MI_NOTEBOOK_OUT']
    with open(out, 'w') as f:
        json.dump(_plain(results), f)
    np.savez(os.path.splitext(out)[0] + '.npz', big_tokens=big_tokens, new_token_batch=new_token_batch,
             **{'init.' + k: v for k, v in initial_state.items()},
             **{'final.' + k: np.asarray(v) for k, v in model.state_dict().items()})
