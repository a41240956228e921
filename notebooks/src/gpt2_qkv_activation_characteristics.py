# %% [markdown]
# # [34] QKV activation characteristics (GPT-2 large), the completed exercise
#
# Port of the seed exercise *"QKV activation characteristics"* (Mike X Cohen, *50 ML
# projects to understand LLMs*, project 34), with every blank filled in, on
# `mechinterp_c`: GPT-2 large runs in the C core, forward hooks on
# `transformer.h[i].attn.c_attn` hand over the fused Q|K|V buffers as NumPy views, and
# the descriptive statistics, histograms and per-head standard deviations over all
# layers are single calls into `mechinterp_c.analysis` (the seed loops over layers).
# No torch.
#
# Choices the exercise leaves open: the target word is `" her"`, the context window
# 10 tokens; "target" is the final token of each window, "non-target" the 10 context
# tokens before it; variances and standard deviations are unbiased (ddof=1, torch's
# default). The text is *The Great Gatsby* from Project Gutenberg when it can be
# downloaded, else (always with `MI_NOTEBOOK_SMALL=1`) the package's built-in English
# text. If `gpt2-large` is not in the local Hugging Face cache, a random-initialised
# checkpoint of the same architecture is used (see the note below). Figures go to
# `$MI_NOTEBOOK_FIGDIR` when set, key numbers to the JSON file `$MI_NOTEBOOK_OUT`.

# %%
import json
import os

import numpy as np
import matplotlib.pyplot as plt
import matplotlib as mpl

from mechinterp_c import analysis, checkpoints
from mechinterp_c.transformers import AutoModelForCausalLM, GPT2Tokenizer

FIGDIR = os.environ.get("MI_NOTEBOOK_FIGDIR")
SMALL = checkpoints.is_small()
results = {}


def savefig(name):
    """Save the current figure into $MI_NOTEBOOK_FIGDIR (when set), then show it inline."""
    if FIGDIR:
        os.makedirs(FIGDIR, exist_ok=True)
        plt.savefig(os.path.join(FIGDIR, f"qkv_characteristics_{name}.png"), dpi=90,
                    bbox_inches="tight")
    plt.show()

# %%
### matplotlib adjustments (commented lines are for dark mode)
plt.rcParams.update({
    'axes.spines.right': False,
    'axes.spines.top':   False,
    'axes.titleweight': 'bold',
    'axes.labelweight': 'bold',
})

# %% [markdown]
# # **Part 1: Model, tokens, QKV activations**

# %%
# load GPT2 model and tokenizer (real ones from the HF cache, else the fallback)
model = AutoModelForCausalLM.from_pretrained(checkpoints.load_or_create('gpt2-large'))
tokenizer = GPT2Tokenizer.from_pretrained(checkpoints.load_or_create('gpt2', tokenizer_only=True))

model.eval()

# %%
# variable for the number of embedding dimensions
n_emb = model.config.n_embd

# and the number of layers
n_layers = model.config.n_layer

# %%
# GreatGatsby (no requests dependency: urllib; the built-in text when offline)
url = 'https://www.gutenberg.org/cache/epub/64317/pg64317.txt'
text = None
if not SMALL:
  try:
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as response:
      text = response.read().decode('utf-8')
  except Exception as e:
    print(f'NOTE: could not download {url} ({type(e).__name__}: {e})')
if text is None:
  text = checkpoints.english_text()
  print('NOTE: using the built-in English text of mechinterp_c instead of The Great Gatsby')
tokens = np.array( tokenizer.encode(text) )

target_word = ' her'
target_ids = tokenizer.encode(target_word)
assert len(target_ids) == 1, f'{target_word!r} is not a single token: {target_ids}'

target_idx = np.where(tokens == target_ids[0])[0]
print(f'{len(target_idx)} instances of "{target_word}"')

# %%
# size of pre-target context (tokens)
contextwin = 10

# remove any target indices that are <contextwin
print(f'Target count before filtering: {len(target_idx)}')
target_idx = target_idx[target_idx >= contextwin]

# a bounded batch: 48 windows with MI_NOTEBOOK_SMALL=1, 256 otherwise
max_windows = 48 if SMALL else 256
target_idx = target_idx[:max_windows]

print(f'Target count after filtering: {len(target_idx)}')

# %%
# create a batch: each row is contextwin tokens and then the target
batch = np.zeros((len(target_idx),contextwin+1),dtype=np.int64)

for i in range(len(target_idx)):
  toks = tokens[target_idx[i]-contextwin : target_idx[i]+1]
  batch[i,:] = toks

batch.shape

# %%
# note the identical final token
batch

# %%
# a few examples
for i in range(5):
  print(tokenizer.decode(batch[i]))

# %%
# Define a hook function to store QKV vectors
activations = {}

def implant_hook(layer_number):
  def hook(module,input,output):
    activations[f'attn_{layer_number}_qkv'] = output.detach()
  return hook


# surgery ;)
handles = []
for i in range(n_layers):
  h = model.transformer.h[i].attn.c_attn.register_forward_hook(implant_hook(i))
  handles.append(h)

# %%
# push through the model
model(batch)

for k,i in activations.items():
  print(k, i.shape)

# %%
# concatenated activations from one layer
layeri = 6

wide_acts = activations[f'attn_{layeri}_qkv'][:,-1,:]

plt.figure(figsize=(10,3))
plt.imshow(wide_acts,aspect='auto',vmin=-1,vmax=1,cmap='plasma')
plt.axvline(n_emb,linestyle='--',color='w')
plt.axvline(2*n_emb,linestyle='--',color='w')
plt.colorbar(pad=.01)

plt.gca().set(xticks=[],ylabel='Batch sequences',
              xlabel='Queries dimensions         |           Keys dimensions             |           Values dimensions')

plt.tight_layout()
savefig('part1')

# %% [markdown]
# # **Part 2: Activation characteristics**

# %%
# just one layer for now
layeri = 6

# split into separate matrices
Q,K,V = np.split(activations[f'attn_{layeri}_qkv'],3,axis=-1)
Q.shape,K.shape,V.shape

# %%
# target (final token) vs non-target (context tokens): arithmetic mean, L1 mean, variance
dt = analysis.describe(Q[:,-1,:],ddof=1)
dn = analysis.describe(Q[:,:-1,:],ddof=1)
qMeans_t = np.array([dt.mean, dt.abs_mean, dt.var])
qMeans_n = np.array([dn.mean, dn.abs_mean, dn.var])

plt.figure(figsize=(8,3))
plt.bar(np.arange(3)-.2,qMeans_t,width=.5,edgecolor='k',label='Target')
plt.bar(np.arange(3)+.2,qMeans_n,width=.5,edgecolor='k',label='Non-target')
plt.legend()
plt.gca().set(xticks=range(3),xticklabels=['Arithmetic mean','L1 mean','Variance'],ylabel='Descriptive values')

plt.tight_layout()
savefig('part2a')

# %%
edges = np.linspace(-7,7,234)

ytQ,_ = analysis.histogram(Q[:,-1,:],edges,density=True)
ynQ,_ = analysis.histogram(Q[:,:-1,:],edges,density=True)
ytK,_ = analysis.histogram(K[:,-1,:],edges,density=True)
ynK,_ = analysis.histogram(K[:,:-1,:],edges,density=True)
ytV,_ = analysis.histogram(V[:,-1,:],edges,density=True)
ynV,_ = analysis.histogram(V[:,:-1,:],edges,density=True)

plt.figure(figsize=(10,3))
plt.plot(edges[:-1],ytQ,label='Q target')
plt.plot(edges[:-1],ynQ,label='Q nontarget')
plt.plot(edges[:-1],ytK,label='K target')
plt.plot(edges[:-1],ynK,label='K nontarget')
plt.plot(edges[:-1],ytV,label='V target')
plt.plot(edges[:-1],ynV,label='V nontarget')

plt.legend()
plt.gca().set(xlim=edges[[0,-1]],xlabel='Activation value',ylabel='Density',
              title=f'Attention matrices distributions from layer {layeri}')

plt.tight_layout()
savefig('part2b')

# %% [markdown]
# # **Part 3: Laminar trends in activation descriptives**

# %%
# helper function
def meansAndVar(X):
  """([mean, L1 mean, variance] of the target token, the same of the non-target tokens)."""
  t = analysis.describe(X[:,-1,:],ddof=1)
  n = analysis.describe(X[:,:-1,:],ddof=1)
  return np.array([t.mean, t.abs_mean, t.var]), np.array([n.mean, n.abs_mean, n.var])

# test
meansAndVar(Q)

# %%
# every layer at once: [layers, batch, pos, matrix (Q,K,V), n_emb]
QKV = np.stack([activations[f'attn_{i}_qkv'] for i in range(n_layers)])
QKV = QKV.reshape(n_layers, len(batch), contextwin+1, 3, n_emb)

# initialize: layers X matrix X feature X category; one describe call per category
descriptives = np.zeros((n_layers,3,3,2))
T = analysis.describe(QKV[:,:,-1],axis=(1,3),ddof=1)       # over batch and units
N = analysis.describe(QKV[:,:,:-1],axis=(1,2,4),ddof=1)    # over batch, context tokens, units
for fi, stat in enumerate(('mean', 'abs_mean', 'var')):
  descriptives[:,:,fi,0] = getattr(T, stat)
  descriptives[:,:,fi,1] = getattr(N, stat)

# the seed's helper gives the same numbers for layer 6
assert np.allclose(descriptives[layeri,0,:,0], meansAndVar(Q)[0]) and np.allclose(descriptives[layeri,0,:,1], meansAndVar(Q)[1])
results['descriptives'] = descriptives

descriptives.shape

# %%
_,axs = plt.subplots(1,3,figsize=(12,3))

feature = ['Arithmetic mean','L1 mean','Variance']

for i in range(len(axs)):
  axs[i].plot(descriptives[:,0,i,0],'gs-',markerfacecolor=[.7,.9,.7,.7],label='Q')
  axs[i].plot(descriptives[:,1,i,0],'ro-',markerfacecolor=[.9,.7,.7,.7],label='K')
  axs[i].plot(descriptives[:,2,i,0],'b^-',markerfacecolor=[.7,.7,.9,.7],label='V')
  axs[i].legend()
  axs[i].set(xlabel='Transformer layer',xticks=range(0,n_layers,4),title=f'{feature[i]}')

plt.tight_layout()
savefig('part3a')

# %%
# non-target minus target (torch's diff(dim=-1) over the category axis)
_,axs = plt.subplots(1,3,figsize=(12,3))

for i in range(len(axs)):
  axs[i].axhline(0,linestyle='--',linewidth=.5,color=[.7,.7,.7])
  axs[i].plot(np.diff(descriptives[:,0,i,:],axis=-1),'gs-',markerfacecolor=[.7,.9,.7,.7],label='Q')
  axs[i].plot(np.diff(descriptives[:,1,i,:],axis=-1),'ro-',markerfacecolor=[.9,.7,.7,.7],label='K')
  axs[i].plot(np.diff(descriptives[:,2,i,:],axis=-1),'b^-',markerfacecolor=[.7,.7,.9,.7],label='V')
  axs[i].legend()
  axs[i].set(xlabel='Transformer layer',xticks=range(0,n_layers,4),title=f'{feature[i]}')

plt.tight_layout()
savefig('part3b')

# %% [markdown]
# # **Part 4: Laminar trends in activation distributions**

# %%
# helper function (one layer, as the seed)
edges = np.linspace(-4,4,101)

def calculateHists(X):
  yt,_ = analysis.histogram(X[:,-1,:],edges,density=True)
  yn,_ = analysis.histogram(X[:,:-1,:],edges,density=True)
  return yt,yn

# %%
# initialize: layers X matrix X bins X category; one batched histogram per category,
# a row per (layer, matrix)
histograms = np.zeros((n_layers,3,len(edges)-1,2))
rows_t = QKV[:,:,-1].transpose(0,2,1,3).reshape(n_layers*3,-1)
rows_n = QKV[:,:,:-1].transpose(0,3,1,2,4).reshape(n_layers*3,-1)
histograms[...,0] = analysis.batched_histogram(rows_t,edges,density=True)[0].reshape(n_layers,3,-1)
histograms[...,1] = analysis.batched_histogram(rows_n,edges,density=True)[0].reshape(n_layers,3,-1)

# the seed's helper gives the same for layer 6's K
assert np.allclose(np.stack(calculateHists(K),-1), histograms[layeri,1])
results['histograms_layer0'] = histograms[0]

histograms.shape

# %%
fig,axs = plt.subplots(2,3,figsize=(12,6))

for i in range(3):
  h = axs[0,i].imshow(histograms[:,i,:,0],vmin=0,vmax=.4,aspect='auto',cmap='plasma',
                  extent=[edges[0],edges[-1],0,n_layers],origin='lower')
  axs[0,i].set(xticklabels=[],ylabel='Layer',yticks=range(0,n_layers,5),title=f"Target {'QKV'[i]}")
  fig.colorbar(h,ax=axs[0,i],pad=.03,orientation='horizontal')

  axs[1,i].imshow(histograms[:,i,:,1],vmin=0,vmax=.4,aspect='auto',cmap='plasma',
                  extent=[edges[0],edges[-1],0,n_layers],origin='lower')
  axs[1,i].set(xlabel='Activation value',ylabel='Layer',yticks=range(0,n_layers,5),title=f"Non-target {'QKV'[i]}")

plt.tight_layout()
savefig('part4')

# %% [markdown]
# # **Part 5: Extracting and characterizing heads**

# %%
n_heads = model.config.n_head
head_dim = n_emb // n_heads

# %%
# extract Q
Q,K,V = np.split(activations['attn_6_qkv'],3,axis=-1)

# and reshape to have a "head" dimension (a view, no copy)
Qh = Q.view(len(batch),contextwin+1,n_heads,head_dim)

print(f'Q is size {list(Q.shape)} and Qh is size {list(Qh.shape)}')

# %%
# visualize: one panel per head (the first sequence; 4x5 for GPT-2 large's 20 heads)
n_rows = int(np.ceil(n_heads/5))
_,axs = plt.subplots(n_rows,5,figsize=(12,1.5*n_rows),squeeze=False)

for i,ax in enumerate(axs.flatten()):
  if i >= n_heads:
    ax.axis('off')
    continue
  ax.pcolor(Qh[0,:,i,:].T,cmap='plasma',vmin=-2,vmax=2)
  # a black shadow under white text (offsets scaled from the seed's 64-dim heads)
  ax.text(contextwin-.5,head_dim-head_dim/64,f'Qh{i}',fontsize=12,fontweight='bold',color='k',ha='right',va='top')
  ax.text(contextwin-.4,head_dim-2*head_dim/64,f'Qh{i}',fontsize=12,fontweight='bold',color='w',ha='right',va='top')
  ax.set(xticks=[],yticks=[])

# finalize
axs[-1,0].set(ylabel='Head dim',xlabel='Token position')

plt.tight_layout()
savefig('part5a')

# %%
# standard deviation along the tokens of every (layer, sequence, matrix, head, dim), one call,
# then averaged over sequences, heads and dims (the seed: Qh.std(dim=1).mean() per layer)
QKVh = QKV.reshape(n_layers,len(batch),contextwin+1,3,n_heads,head_dim)
sd_tokens = analysis.describe(QKVh,axis=2,ddof=1).std          # [layers, batch, 3, heads, head_dim]
head_stdevs = sd_tokens.mean(axis=(1,3,4))                       # [layers, 3]
results['head_stdevs'] = head_stdevs

# and visualize
plt.figure(figsize=(10,3))

plt.plot(head_stdevs[:,0],'gs-',markersize=9,markerfacecolor=[.7,.9,.7],label='Q')
plt.plot(head_stdevs[:,1],'ro-',markersize=9,markerfacecolor=[.9,.7,.7],label='K')
plt.plot(head_stdevs[:,2],'b^-',markersize=9,markerfacecolor=[.7,.7,.9],label='V')

plt.legend()
plt.gca().set(xlabel='Transformer layer',ylabel='Average standard deviation')

plt.tight_layout()
savefig('part5b')

# %%
# key numbers for the test / the record
results.update(n_layers=n_layers, n_heads=n_heads, target_id=int(target_ids[0]), batch=batch,
               qMeans_t=qMeans_t, qMeans_n=qMeans_n)

def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return np.where(np.isfinite(x), x.astype(np.float64), None).tolist() if x.dtype.kind == 'f' else x.tolist()
    return x

if os.environ.get('MI_NOTEBOOK_OUT'):
    with open(os.environ['MI_NOTEBOOK_OUT'], 'w') as f:
        json.dump(_plain(results), f)
