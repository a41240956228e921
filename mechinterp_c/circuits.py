"""Circuit views of a model's weights and weight processing as model methods.

``CircuitsMixin`` gives ``HookedTransformer`` TransformerLens's circuit API:
``model.QK`` / ``model.OV`` (FactoredMatrix of [n_layers, n_heads, d_model,
d_model]), ``all_composition_scores``, ``W_E_pos``, ``accumulated_bias``,
``all_head_labels``, ``n_params_total``, and the weight processing steps of
``weight_processing`` as methods (``fold_layer_norm`` ... ``process_weights_``).

What it needs from the model: ``cfg``; the stacked weights ``W_Q``, ``W_K``,
``W_V``, ``W_O`` [L, H, ., .]; ``W_E`` [V, D], ``W_pos`` [C, D]; ``blocks[l].attn.b_O``
and ``blocks[l].mlp.b_out`` [D]; ``state_dict()``, ``load_and_process_state_dict``.
"""
import numpy as np

from . import weight_processing
from .factored_matrix import FactoredMatrix
from .utils import composition_scores, to_numpy

# right-hand circuit of each composition mode: the reading head's Q, K or V side
_COMPOSITION_RIGHT = {"Q": lambda m: m.QK, "K": lambda m: m.QK.T, "V": lambda m: m.OV}


class CircuitsMixin:
    """Circuit views and weight processing methods (TransformerLens names and semantics)."""

    @property
    def QK(self):
        """W_Q @ W_K^T per head: FactoredMatrix [n_layers, n_heads, d_model, d_model]."""
        return FactoredMatrix(self._np_weight("W_Q"), np.swapaxes(self._np_weight("W_K"), -1, -2))

    @property
    def OV(self):
        """W_V @ W_O per head: FactoredMatrix [n_layers, n_heads, d_model, d_model]."""
        return FactoredMatrix(self._np_weight("W_V"), self._np_weight("W_O"))

    @property
    def W_E_pos(self):
        """W_E and W_pos stacked [d_vocab + n_ctx, d_model] (a copy): an overcomplete basis
        of the input space for full QK and OV circuits."""
        return np.concatenate([self._np_weight("W_E"), self._np_weight("W_pos")], axis=0)

    def accumulated_bias(self, layer, mlp_input=False, include_mlp_biases=True):
        """The sum [d_model] of the output biases (b_O, and b_out with include_mlp_biases)
        of the blocks before ``layer`` (0..n_layers); with mlp_input, also layer's own b_O
        (the bias reaching its MLP input). Attention-only models have no b_out to add."""
        L = self.cfg.n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= L:
            raise ValueError(f"accumulated_bias: layer must be an int in [0, {L}] (n_layers), "
                             f"got {layer!r}")
        if mlp_input and layer == L:
            raise ValueError(f"accumulated_bias: mlp_input=True needs layer < n_layers ({L}): "
                             f"there is no attention output beyond the final layer")
        with_mlp = include_mlp_biases and not self.cfg.attn_only
        bias = np.zeros(self.cfg.d_model, dtype=np.float32)
        P = self._params
        for l in range(layer):
            bias += P[f"blocks.{l}.attn.b_O"]
            if with_mlp:
                bias += P[f"blocks.{l}.mlp.b_out"]
        if mlp_input:
            bias += P[f"blocks.{layer}.attn.b_O"]
        return bias

    def all_composition_scores(self, mode):
        """Composition scores of every (earlier head, later head) pair [L1, H1, L2, H2]:
        how much the Q ("Q"), K ("K") or V ("V") side of head (L2, H2) reads what the OV
        circuit of head (L1, H1) writes; zero unless L1 < L2."""
        if mode not in _COMPOSITION_RIGHT:
            raise ValueError(f"mode must be one of ['Q', 'K', 'V'] not {mode!r}")
        scores = composition_scores(self.OV, _COMPOSITION_RIGHT[mode](self), broadcast_dims=True)
        layers = np.arange(self.cfg.n_layers)
        later = layers[:, None, None, None] < layers[None, None, :, None]
        return np.where(later, scores, np.zeros_like(scores))

    def all_head_labels(self):
        """``["L0H0", "L0H1", ...]``: every head, layer-major."""
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    @property
    def n_params_total(self):
        """Every parameter counted (embeddings, biases and norm weights too), as
        ``sum(p.numel() for p in model.parameters())``; ``cfg.n_params`` counts the
        attention and MLP weight matrices only."""
        return int(sum(v.size for v in self._params.values()))

    # ------------------------------------------------------- weight processing
    def fold_layer_norm(self, state_dict, fold_biases=True, center_weights=True):
        """``state_dict`` (TransformerLens names) with every norm's weight (and, with
        fold_biases, bias) folded into the next linear layer, as TransformerLens: the norm
        weights become 1 and folded biases 0 (unfolded ones stay), so the dict still loads
        into this model and, with fold_biases for LN, computes the same function. For RMS
        norm pass fold_biases=False, center_weights=False. Returns a new dict; the model is
        not changed."""
        folded = weight_processing.fold_layer_norm(state_dict, self.cfg, fold_biases, center_weights)
        for k, v in state_dict.items():
            if k not in folded:
                v = to_numpy(v)
                folded[k] = np.ones_like(v) if k.endswith(".w") else np.zeros_like(v) if fold_biases else v
        return folded

    def center_writing_weights(self, state_dict):
        """``state_dict`` with the weights writing to the residual stream (W_E, W_pos,
        W_O, b_O, W_out, b_out) centred over d_model. Returns a new dict."""
        return weight_processing.center_writing_weights(state_dict, self.cfg)

    def center_unembed(self, state_dict):
        """``state_dict`` with W_U and b_U centred over the vocabulary (log-probs unchanged).
        Returns a new dict."""
        return weight_processing.center_unembed(state_dict)

    def fold_value_biases(self, state_dict):
        """``state_dict`` with each layer's b_V folded into b_O (b_V becomes 0). Returns a
        new dict."""
        return weight_processing.fold_value_biases(state_dict, self.cfg)

    def refactor_factored_attn_matrices(self, state_dict):
        """``state_dict`` with each head's QK and OV circuits refactored into balanced,
        orthogonal factors (``weight_processing.refactor_factored_attn_matrices``); the
        model computes the same function. Returns a new dict."""
        return weight_processing.refactor_factored_attn_matrices(state_dict, self.cfg)

    def process_weights_(self, fold_ln=True, center_writing_weights=True, center_unembed=True,
                         refactor_factored_attn_matrices=False):
        """Process the model's own weights in place, as ``load_and_process_state_dict`` of
        its ``state_dict()`` (value biases folded too); with fold_ln the norms become
        LNPre / RMSPre."""
        self.load_and_process_state_dict(
            self.state_dict(), fold_ln=fold_ln, center_writing_weights=center_writing_weights,
            center_unembed=center_unembed, refactor_factored_attn_matrices=refactor_factored_attn_matrices)
