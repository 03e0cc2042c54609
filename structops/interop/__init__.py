"""Interoperability: layers and whole networks from PyTorch, and the per-layer spectrum report.

:func:`from_torch` and :func:`layer_operator` (:mod:`structops.interop.pytorch`)
convert modules; :func:`layer_spectra` (:mod:`structops.interop.report`) walks a
model and certifies every layer's extreme singular values;
:mod:`structops.interop.networks` builds ResNet-18 and MobileNetV2 shaped
models in-repo. torch is imported only when these are called.
"""

from .pytorch import LINEAR_MODULES, from_torch, layer_operator, torch_padding_pairs
from .report import LayerReport, NetworkReport, layer_spectra

__all__ = ["from_torch", "layer_operator", "torch_padding_pairs", "LINEAR_MODULES", "layer_spectra", "LayerReport",
           "NetworkReport"]
