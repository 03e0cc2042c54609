"""Networks with the layer shapes of ResNet-18 (He et al., 2016) and MobileNetV2 (Sandler et al., 2018), built in-repo.

Random Kaiming-normal initialisation (``fan_out``, as torchvision), batch
norms at their initial state, float64; no downloads. They exist to exercise
:func:`~structops.interop.layer_spectra` on real architectures: strided
shortcuts, 1x1 projections, depthwise convolutions, a linear classifier.
"""

from __future__ import annotations

__all__ = ["resnet18", "mobilenet_v2", "NETWORKS"]


def _init(model, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_out = m.weight.shape[0] * (m.weight[0, 0].numel() if m.weight.ndim > 2 else 1)
            with torch.no_grad():
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.zero_()
    return model.double().eval()


def resnet18(num_classes: int = 1000, seed: int = 0):
    """A ResNet-18 (basic blocks ``[2, 2, 2, 2]``, widths 64-512, 7x7 stride-2 stem, max pool)."""
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.pool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], 64
            for i, (c, s) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
                layers.append(nn.Sequential(Basic(cin, c, s), Basic(c, c, 1)))
                cin = c
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return _init(ResNet18(), seed)


def mobilenet_v2(num_classes: int = 1000, seed: int = 0):
    """A MobileNetV2 (width 1.0): inverted residual blocks with 3x3 depthwise convolutions."""
    import torch
    from torch import nn

    def cbr(cin, cout, k, s, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6())

    class Inverted(nn.Module):
        def __init__(self, cin, cout, s, t):
            super().__init__()
            hid = cin * t
            mods = [cbr(cin, hid, 1, 1)] if t != 1 else []
            mods += [cbr(hid, hid, 3, s, groups=hid), nn.Conv2d(hid, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*mods)
            self.res = s == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                   (6, 320, 1, 1)]
            mods, cin = [cbr(3, 32, 3, 2)], 32
            for t, c, n, s in cfg:
                for i in range(n):
                    mods.append(Inverted(cin, c, s if i == 0 else 1, t))
                    cin = c
            mods.append(cbr(cin, 1280, 1, 1))
            self.features = nn.Sequential(*mods)
            self.classifier = nn.Linear(1280, num_classes)

        def forward(self, x):
            x = self.features(x)
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return _init(MobileNetV2(), seed)


#: name -> constructor
NETWORKS = {"resnet18": resnet18, "mobilenetv2": mobilenet_v2}
