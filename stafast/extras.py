"""Optional dependencies: the pip extras of stafast, and `require`, which imports one where it is
first needed or says which extra to install.

    onnx = require("onnx", "export", "python -m stafast.export --format onnx")
    # without it: MissingExtra: python -m stafast.export --format onnx needs the module onnx, which
    #             cannot be imported (No module named 'onnx'): pip install 'stafast[export]'

EXTRAS is the one list: setup.py reads it (this file imports nothing but the standard library).
"""
from __future__ import annotations

import importlib

EXTRAS = {  # extra -> its pip requirements
    "export": ["onnx", "onnxscript", "onnxruntime"],  # --format onnx (torch.onnx needs onnxscript), its check
    "video": ["av>=17"],                              # video tracklets: frame counts, decoding (PyAV)
    "dali": ["nvidia-dali-cuda130"],                  # --pipeline dali
    "search": ["faiss-cpu"],                          # stafast.search: gallery indexes at any size (FAISS)
    "tensorboard": ["tensorboard"],                   # the trainer's TensorBoard scalars (tb/)
    "hdf5": ["h5py"],                                 # MATLAB v7.3 (.mat) split and track files
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, why: str):
    """The module `module` (e.g. "onnxscript", "nvidia.dali"), imported; if it cannot be, a
    MissingExtra saying that `why` (what needs it) needs it and which pip extra installs it."""
    if extra not in EXTRAS:
        raise KeyError(f"require: unknown extra {extra!r}; the extras are {sorted(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"{why} needs the module {module}, which cannot be imported ({e}): "
                           f"pip install 'stafast[{extra}]'", name=module) from e
