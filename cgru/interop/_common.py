"""What every converter shares: importing the framework it needs, with an install hint."""


def require(module, install):
    """The module, or an ImportError saying what to install."""
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(f"this conversion needs {module}: pip install {install} ({e})") from None


def refuse_quantized(gru_or_model, what, target):
    """A ValueError when a cgru.GRU or model holds quantized weights: `target` has no GRU that
    computes what cgru's reduced precision computes, so the export would change the outputs."""
    layers = getattr(gru_or_model, "layers", None)
    if layers is None:
        mode = getattr(gru_or_model, "quantized", None)
        quantized = [f"{type(gru_or_model).__name__} ({mode})"] if mode else []
    else:
        quantized = [f"layer '{layer.name}' ({layer.quantized})" for layer in layers
                     if getattr(layer, "quantized", None) is not None]
    if quantized:
        raise ValueError(f"{what}: {', '.join(quantized)} holds quantized weights, and "
                         f"{target} has no GRU that computes as cgru's quantized one does; "
                         f"export the float32 model (before quantize) instead")
