"""Reading PyTorch checkpoints into numpy, for weight converters."""

import os

import numpy as np

__all__ = ["load_torch_state_dict"]


def load_torch_state_dict(path):
    """Reads a PyTorch `.pth`/`.pt` state dict, or a `.safetensors` file.

    Args:
        path: local file. `.safetensors` is read with the `safetensors`
            package (numpy API, no torch needed); anything else with
            `torch.load(..., weights_only=True)` on the CPU.

    Returns:
        `dict[str, np.ndarray]` of float32/int arrays, keys as in the file.
        A checkpoint that wraps its weights in `{"state_dict": ...}` or
        `{"model": ...}` is unwrapped.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ImportError: if the reader it needs is not installed, with the pip
            command that fixes it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ImportError(
                f"Reading {path} needs the safetensors package: "
                "`pip install safetensors`."
            ) from e
        return {k: np.asarray(v) for k, v in load_file(path).items()}
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading the PyTorch checkpoint {path} needs torch (CPU build): "
            "`pip install torch==2.13.0`, or `pip install kertransfer[torch]`. "
            "The converted weights are cached, so this is needed only once."
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
