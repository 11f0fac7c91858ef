"""MLP heads declared as data: `mlp([512, 2048, 2048], last_bn=True)` is Linear-BN-ReLU-Linear-BN.

Every hidden layer is Linear (no bias) -> BN -> ReLU; the last layer is Linear, followed by BN without
ReLU when `last_bn` (SimSiam's projector) and with a bias otherwise (predictors).
"""
from __future__ import annotations

import torch.nn as nn


def mlp(dims: list[int], last_bn: bool = False, hidden_bn: bool = True, last_bn_affine: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(d_in, d_out, bias=not hidden_bn)]
        if hidden_bn:
            layers += [nn.BatchNorm1d(d_out)]
        layers += [nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_bn_affine))
    return nn.Sequential(*layers)
