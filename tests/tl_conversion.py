"""Test-only: the TransformerLens twin of a model loaded from a `transformers`
checkpoint, converted by TransformerLens's own weight-conversion function
(e.g. `convert_llama_weights`): used by the loading tests of every family."""
import warnings


def tl_twin(model, hf, convert):
    """(TransformerLens model, its state dict as NumPy) for our ``model`` loaded from
    the `transformers` model ``hf``: TransformerLens's config built from ours, the
    weights from ``convert(hf, cfg)``."""
    import transformer_lens as tl
    cfg = {k: v for k, v in model.cfg.to_dict().items()
           if k not in ("extra", "n_params", "dtype", "device", "tokenizer_prepends_bos")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tcfg = tl.HookedTransformerConfig(**cfg)
        sd = convert(hf, tcfg)
        tm = tl.HookedTransformer(tcfg)
    tm.load_state_dict(sd, strict=False)
    return tm, {k: v.detach().numpy() for k, v in sd.items()}
