"""Convex training of ReLU CNNs on structured patch operators.

- :class:`PatchOperator`: ``u -> (X_k u)_k`` for a batch of images, matrix-free
  (a convolution's kernel Jacobian) or through the explicit patch tensor.
- :func:`sample_gates`: convolutional hyperplane arrangements
  ``D_jk = diag(1[X_k g_j >= 0])``.
- :func:`gated_relu_cnn` and :func:`relu_cnn`: the convex programs of two-layer
  CNNs (Ergen and Pilanci 2021), with duality-gap certificates, and the
  recovered networks (:class:`TwoLayerCNN`).
- :func:`train_two_layer_sgd`: the non-convex baseline.
- :func:`three_layer_cnn`: the convex relaxation of three-layer CNNs with two
  ReLU levels (nuclear-norm matrix groups, certified), over patterns from
  :func:`sample_three_layer_patterns` and :func:`network_patterns`, with the
  network read off it (:class:`ThreeLayerCNN`) and its SGD baseline
  :func:`train_three_layer_sgd`.
- :mod:`~structops.convex.ccnn`: convexified CNNs (Zhang, Liang and
  Wainwright 2017), with the CNN baseline in :mod:`~structops.convex.sgd`
  and the digit variations in :mod:`~structops.convex.datasets`.
"""

from . import ccnn, datasets
from .arrangements import Gates, sample_gates
from .fista import group_fista, group_prox
from .patches import PatchOperator
from .sgd import train_two_layer_sgd
from .three_layer import (ThreeLayerCNN, ThreeLayerFit, ThreeLayerPatterns, network_patterns,
                          sample_three_layer_patterns, three_layer_cnn, train_three_layer_sgd)
from .two_layer import ConvexCNNFit, TwoLayerCNN, gated_relu_cnn, merge_parallel_neurons, recover_network, relu_cnn

__all__ = [
    "PatchOperator",
    "Gates",
    "sample_gates",
    "group_fista",
    "group_prox",
    "ConvexCNNFit",
    "TwoLayerCNN",
    "gated_relu_cnn",
    "relu_cnn",
    "recover_network",
    "merge_parallel_neurons",
    "train_two_layer_sgd",
    "ThreeLayerPatterns",
    "sample_three_layer_patterns",
    "network_patterns",
    "ThreeLayerCNN",
    "ThreeLayerFit",
    "three_layer_cnn",
    "train_three_layer_sgd",
]
