# %% [markdown]
# # LLM breakdown 5/6: Attention (GPT-2 large)
#
# Port of the seed notebook *"LLM breakdown 5/6: Attention"* (Mike X Cohen) to
# `mechinterp_c`: GPT-2 large runs in the C core; forward hooks on
# `transformer.h[i].attn.c_attn` hand the fused Q|K|V buffer over as NumPy views; the
# head lesion is a forward *pre*-hook on `attn.c_proj`, as in the seed. Histograms,
# variances, QK^T/sqrt(d) scores, their softmax and the per-layer lesion sweep are
# single calls into `mechinterp_c.analysis`. No torch.
#
# If `gpt2-large` is not in the local Hugging Face cache, a random-initialised
# checkpoint of the same architecture is created on the spot (see the note below; a
# smaller one with `MI_NOTEBOOK_SMALL=1`). Figures go to `$MI_NOTEBOOK_FIGDIR` when
# set, key numbers to the JSON file `$MI_NOTEBOOK_OUT`.

# %%
import json
import os

import numpy as np
import matplotlib.pyplot as plt
import matplotlib as mpl

from mechinterp_c import analysis, checkpoints
from mechinterp_c.transformers import AutoModelForCausalLM, GPT2Tokenizer

FIGDIR = os.environ.get("MI_NOTEBOOK_FIGDIR")
results = {}


def savefig(name):
    """Save the current figure into $MI_NOTEBOOK_FIGDIR (when set), then show it inline."""
    if FIGDIR:
        os.makedirs(FIGDIR, exist_ok=True)
        plt.savefig(os.path.join(FIGDIR, f"attention_breakdown_{name}.png"), dpi=90,
                    bbox_inches="tight")
    plt.show()


def log_softmax(x):
    """log_softmax over the last axis in float64 (torch.nn.functional.log_softmax)."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))

# %%
### the seed's "dark mode" style
plt.rcParams.update({
    'figure.facecolor': '#171717',
    'figure.edgecolor': '#171717',
    'axes.facecolor':   '#171717',
    'axes.edgecolor':   '#DDE2F4',
    'axes.labelcolor':  '#DDE2F4',
    'xtick.color':      '#DDE2F4',
    'ytick.color':      '#DDE2F4',
    'text.color':       '#DDE2F4',
    'axes.spines.right': False,
    'axes.spines.top':   False,
    'axes.titleweight': 'bold',
    'axes.labelweight': 'bold',
})

# %% [markdown]
# # Demo 1: Inspecting the attention adjustment vectors

# %%
# GPT2 model and its tokenizer (real ones from the HF cache, else the fallback)
model = AutoModelForCausalLM.from_pretrained(checkpoints.load_or_create('gpt2-large'))
tokenizer = GPT2Tokenizer.from_pretrained(checkpoints.load_or_create('gpt2', tokenizer_only=True))
# note: all GPT2 variants use the same tokenizer

# toggle model into "evaluation" mode
model.eval()

# %%
# convenience variables
n_layers = model.config.n_layer
n_embd = model.config.n_embd

# some helpful variables
n_heads = model.config.n_head
head_dim = n_embd // n_heads # will be used in demo 3
sqrtD = np.sqrt(np.float32(head_dim)) # used for attention equation

# %%
# hook functions to store QVK vectors

# 1) initialize an empty dictionary
activations = {}

# 2) an "outer" function that creates a hook
def implant_hook(layer_number):
  def hook(module, input, output):

    # 3) grab the activations (a NumPy view of the C buffer) and store them
    activations[f'L{layer_number}_qvk'] = output.detach()
    # no 'return' in the hook function!

  return hook # this line is for the 'implant_hook' function

# 4) implant hooks into all layers
hookhandles = []
for layeri in range(n_layers):
  layername = model.transformer.h[layeri].attn.c_attn
  hookhandles.append(layername.register_forward_hook(implant_hook(layeri)))

# %%
txt = """Be who you are and say what you feel,
      because those who mind don't matter and those who matter don't mind"""
tokens = tokenizer.encode(txt,return_tensors='np')

n_tokens = len(tokens[0])

print('The text contains:')
print(f'  {len(txt)} characters ({len(set(txt))} unique)')
print(f'  {n_tokens} tokens ({len(set(tokens[0]))} unique)')

# %%
# push through the model
model(tokens)
activations.keys(),activations['L5_qvk'].shape

# %%
# split into separate matrices
q,k,v = np.split(activations['L5_qvk'],3,axis=-1)
q.shape,k.shape,v.shape

# %%
# histograms (torch.histogram(bins=100) == np.histogram's min..max rule)
y_q,x_q = analysis.histogram(q[0,1:,:],bins=100,density=True)
y_k,x_k = analysis.histogram(k[0,1:,:],bins=100,density=True)
y_v,x_v = analysis.histogram(v[0,1:,:],bins=100,density=True)

plt.figure(figsize=(9,3))
plt.plot(x_k[:-1],y_k,linewidth=2,label='K')
plt.plot(x_q[:-1],y_q,linewidth=2,label='Q')
plt.plot(x_v[:-1],y_v,linewidth=2,label='V')

plt.legend()
plt.gca().set(xlabel='Activation value',ylabel='Density',xlim=x_k[[0,-2]],
              title='Distribution of Layer 5 attention activations')

savefig('layer5_hist')

# %%
# common bin boundaries for all vectors
binEdges = np.linspace(-5,5,101)

# Q, K, V of every layer (first token left out, as the seed): [n_layers, n_tokens-1, n_embd]
QKV = np.stack([activations[f'L{layeri}_qvk'][0,1:,:] for layeri in range(n_layers)])
Qall, Kall, Vall = np.split(QKV, 3, axis=-1)

# one batched histogram per matrix: a row per layer (replaces the seed's loop)
Qhist = analysis.batched_histogram(Qall.reshape(n_layers,-1),bins=binEdges,density=True)[0]
Khist = analysis.batched_histogram(Kall.reshape(n_layers,-1),bins=binEdges,density=True)[0]
Vhist = analysis.batched_histogram(Vall.reshape(n_layers,-1),bins=binEdges,density=True)[0]

# variances per layer (torch.var: unbiased, ddof=1)
variances = np.stack([analysis.describe(X.reshape(n_layers,-1),axis=1,ddof=1).var
                      for X in (Qall, Kall, Vall)], axis=1)
results['variances'] = variances
results['Qhist_row5'] = Qhist[5]

# %%
fig,axs = plt.subplots(1,3,figsize=(10,4))

h = axs[0].imshow(Qhist,aspect='auto',origin='lower',cmap='magma',vmin=0,vmax=.4,extent=[binEdges[0],binEdges[-2],0,n_layers])
axs[0].set(xlabel='Activation value',ylabel='Transformer block',title='Q activations\n\n\n')
ch = fig.colorbar(h,ax=axs[0],location='top',pad=.02)

h = axs[1].imshow(Khist,aspect='auto',origin='lower',cmap='magma',vmin=0,vmax=.3,extent=[binEdges[0],binEdges[-2],0,n_layers])
axs[1].set(xlabel='Activation value',title='K activations\n\n\n')
ch = fig.colorbar(h,ax=axs[1],location='top',pad=.02)

h = axs[2].imshow(Vhist,aspect='auto',origin='lower',cmap='magma',vmin=0,vmax=.7,extent=[binEdges[0],binEdges[-2],0,n_layers])
axs[2].set(xlabel='Activation value',title='V activations\n\n\n')
ch = fig.colorbar(h,ax=axs[2],location='top',pad=.02)

plt.tight_layout()
savefig('layer_hists')

# %%
plt.figure(figsize=(8,3))
plt.plot(variances,'.-')

plt.legend(['Q','K','V'])
plt.gca().set(xlabel='Transformer block',ylabel='Variance',xlim=[0,n_layers],
              title='Variance of attention activations')

plt.tight_layout()
savefig('variances')

# %% [markdown]
# # Demo 2: Distribution of QK^T
#
# As in the seed, Q and K here are the full `n_embd`-wide vectors of the last layer
# (the seed's loop variable), scaled by sqrt(head_dim). `analysis.qk_scores` with one
# "head" of width n_embd and `scale=1/sqrt(head_dim)` computes exactly that.

# %%
q, k = Qall[-1], Kall[-1]
print(k.shape)
print(k.T.shape)

# %%
qkt = analysis.qk_scores(q, k, n_heads=1, scale=1/sqrtD).scores[0]
qkt.shape

# %%
fig,axs = plt.subplots(1,2,figsize=(10,3))

# the matrix
# the seed's colour range suits the real gpt2-large; a random stand-in gets its own range
real_model = not getattr(model.config, 'mechinterp_c_fallback', False)
h = axs[0].imshow(qkt,cmap='magma',vmin=-90 if real_model else None,vmax=0 if real_model else None)
fig.colorbar(h,ax=axs[0],pad=.02)
axs[0].set(title=r'$QK^T \;/\; \sqrt{d_k}$',xlabel='Tokens',ylabel='Tokens')

# the matrix vectorized
qkt_f = qkt.flatten()
scaled = (qkt_f-qkt_f.min()) / (qkt_f.max()-qkt_f.min())
axs[1].scatter(range(len(qkt_f)),qkt_f,20,edgecolor='w',linewidth=.3,
               marker='s',c=mpl.cm.magma(scaled),alpha=.8)
axs[1].set(xlabel='Dot product index',ylabel='Dot product value',
           title='Distribution of $QK^T$',xlim=[0,len(qkt_f)])

plt.tight_layout()
savefig('qkt_matrix')

# %%
# every layer in one call: the layers ride on the batch axis ([n_layers, pos, 1 head, n_embd]);
# softmax over keys without a mask, as the seed's F.softmax(attn_acts, dim=-1)
sc = analysis.qk_scores(Qall[:, :, None, :], Kall[:, :, None, :], scale=1/sqrtD, softmax=True)
attn_acts = sc.scores[0]        # [n_layers, n_tokens-1, n_tokens-1]
attn_soft = sc.pattern[0]

# per-layer histograms (each its own min..max, 20 bins) and descriptives (torch .std: ddof=1)
raw_y, raw_x = analysis.batched_histogram(attn_acts.reshape(n_layers,-1),20,density=True,per_row=True)
soft_y, soft_x = analysis.batched_histogram(attn_soft.reshape(n_layers,-1),20,density=True,per_row=True)
d = analysis.describe(attn_acts.reshape(n_layers,-1),axis=1,ddof=1)
meenz, stdz = d.mean, d.std
results['qkt_mean'] = meenz
results['qkt_std'] = stdz
results['softmax_hist_layer0'] = soft_y[0]

_,axs = plt.subplots(1,2,figsize=(10,3))

# normalization for mapping line colors to colorbar
cmap = mpl.cm.plasma
norm = mpl.colors.Normalize(vmin=0,vmax=n_layers)

for layeri in range(n_layers):
  axs[0].plot(raw_x[layeri][:-1],raw_y[layeri],color=cmap(norm(layeri)),label=f'Layer {layeri}')
  axs[1].plot(soft_x[layeri][:-1],soft_y[layeri],color=mpl.cm.plasma(layeri/n_layers),label=f'Layer {layeri}')

# plot adjustments
axs[0].set(xlabel='Activation value',ylabel='Density',title='Distribution of $QK^T$',ylim=[0,None])
axs[1].set(xlabel='Softmax probability',ylabel='log(density)',yscale='log',
           title='Distribution of $\\sigma(QK^T)$')

# create a colorbar
sm = mpl.cm.ScalarMappable(cmap=cmap, norm=norm)
cbar = plt.colorbar(sm,ax=axs[-1],pad=.02)
cbar.set_label('Transformer block')

plt.tight_layout()
savefig('qkt_distributions')

# %%
_,ax = plt.subplots(1,1,figsize=(6,3))

# plot the means in green
ax.plot(meenz,'s-',color=[.7,.9,.7],label='Mean')
ax.set(xlabel='Transformer block')
ax.set_ylabel('Activation mean',color=[.7,.9,.7])
ax.tick_params(axis='y',colors=[.7,.9,.7])

# and the standard deviations in lavender
axx = ax.twinx()
axx.plot(stdz,'o-',color=[.7,.7,.9],label='Stdev.')
axx.spines['right'].set_visible(True)
axx.set_ylabel('Activation stdev.',color=[.7,.7,.9])
axx.tick_params(axis='y',colors=[.7,.7,.9])

# get both legends
lines, labels = ax.get_legend_handles_labels()
lines2, labels2 = axx.get_legend_handles_labels()
ax.legend(lines + lines2, labels + labels2)

plt.tight_layout()
savefig('qkt_mean_std')

# %% [markdown]
# # Demo 3: Impact of attention head lesion on token prediction

# %%
# separate the Q,K,V matrices
q,k,v = np.split(activations['L9_qvk'][0,:,:],3,axis=1)

# now split into heads
q_h = np.split(q,n_heads,axis=1)

print(f'There are {len(q_h)} heads')
print(f'Each head has size {q_h[2].shape}')

# %%
# remove all the previous hooks
for h in hookhandles:
  h.remove()

# %%
outputs_clean = model(tokens)

outputs_clean.logits.shape

# %%
print(txt)

# %%
# convert to log-softmax
log_smax_clean = log_softmax(outputs_clean.logits[0,-2,:])
results['clean_logprob'] = float(log_smax_clean[tokens[0,-1]])

plt.figure(figsize=(10,3.5))
plt.plot(log_smax_clean,'ko',markerfacecolor=[.7,.7,.9,.4],markersize=6)
plt.plot(tokens[0,-1],log_smax_clean[tokens[0,-1]],'rs',zorder=-2,alpha=.7,
         label=f'Final token ("{tokenizer.decode(tokens[0,-1])}")')

plt.legend()
plt.gca().set(xlabel='Vocab index',ylabel='Log probability',xlim=[-20,len(log_smax_clean)+19],
              title='Log softmax for penultimate token')

plt.tight_layout()
savefig('clean_logsoftmax')

# %% [markdown]
# Now for the experiment :) The seed's loop (a pre-hook on `attn.c_proj` per layer that
# zeroes head 5 at the penultimate position) is one call,
# `analysis.head_ablation_sweep`; the seed's pre-hook loop is run too, to show they agree.

# %%
sweep = analysis.head_ablation_sweep(model, tokens, heads=4, positions=-2, target_positions=-2)
ablation_logits = sweep.logprobs[:, 0, 0, 0].astype(np.float64)

# %%
# the seed's loop, with the forward pre-hook on c_proj
seed_ablation = np.zeros(n_layers)

for layeri in range(n_layers):

  def hook2ablate(module,input):
    # reshape so we can index heads (1 -> batch size); a view: edits reach the C pass
    head_tensor = input[0].view(1,n_tokens,n_heads,head_dim)
    # replace 5th head with zeros
    head_tensor[:,-2,4,:] = 0
    # return a tuple matching the original
    return (head_tensor.view(1,n_tokens,n_embd),)

  h = model.transformer.h[layeri].attn.c_proj.register_forward_pre_hook(hook2ablate)
  outputs_ablated = model(tokens)
  h.remove()

  seed_ablation[layeri] = log_softmax(outputs_ablated.logits[0,-2,:])[tokens[0,-1]]

print('largest difference sweep vs seed loop:', np.abs(seed_ablation - ablation_logits).max())
assert np.allclose(seed_ablation, ablation_logits, atol=1e-4)
results['ablation_logprobs'] = ablation_logits

# %%
plt.figure(figsize=(9,3))

# draw the dots with colors for layer
for i in range(n_layers):
  plt.plot(i,ablation_logits[i],'wh',markerfacecolor=mpl.cm.plasma(i/n_layers),markersize=12)

# and the clean logit
plt.axhline(log_smax_clean[tokens[0,-1]],linestyle='--',color=[.7,.7,.7],zorder=-2,label='Clean log-prob')

plt.legend()
plt.gca().set(xlabel='Transformer block',ylabel='Log probability',
              title='Log softmax for penultimate token')

plt.tight_layout()
savefig('head_lesion')

# %%
# FYI
np.exp(-.161)

# %%
# key numbers for the test / the record
results.update(n_layers=n_layers, n_heads=n_heads, n_tokens=n_tokens, tokens=tokens[0])

def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return np.where(np.isfinite(x), x.astype(np.float64), None).tolist() if x.dtype.kind == 'f' else x.tolist()
    return x

if os.environ.get('MI_NOTEBOOK_OUT'):
    with open(os.environ['MI_NOTEBOOK_OUT'], 'w') as f:
        json.dump(_plain(results), f)
