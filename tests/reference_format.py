"""Models in the authors' format (module names, layer order, shuffle), written for the conversion tests.

They follow the architecture the authors' Training/models describe (decoupled ResNets with shuffles after
layer1-3, the decoupled VGG-16-bn "v2" in three blocks), but are independent code: plain loops over
nn.Sequential, and the shuffle spelt out as its reshape - (B, C/G, G, H, W), swap the channel axes.
"""

import torch
from torch import nn


def authors_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c // groups, groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)


class _Residual(nn.Module):
    def __init__(self, convs: list[tuple[int, int, int, int]], groups: int, downsample: nn.Module | None):
        super().__init__()
        for i, (cin, cout, k, stride) in enumerate(convs, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.depth = len(convs)

    def forward(self, x):
        out = x
        for i in range(1, self.depth + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.depth:
                out = self.relu(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ReferenceResNet(nn.Module):
    """conv1, bn1, relu, maxpool, layer1..4, avgpool, fc; BasicBlock (bottleneck=False) or Bottleneck."""

    def __init__(self, layers, planes, bottleneck: bool, groups: int = 4, num_classes: int = 1000):
        super().__init__()
        self.groups = groups
        expansion = 4 if bottleneck else 1
        self.conv1 = nn.Conv2d(3, planes[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = planes[0]
        for stage, (n, p) in enumerate(zip(layers, planes), start=1):
            blocks = []
            for j in range(n):
                stride = 2 if stage > 1 and j == 0 else 1
                cout = p * expansion
                down = None
                if stride != 1 or cin != cout:
                    conv = nn.Conv2d(cin, cout, 1, stride, groups=groups, bias=False)
                    down = nn.Sequential(conv, nn.BatchNorm2d(cout))
                if bottleneck:
                    convs = [(cin, p, 1, 1), (p, p, 3, stride), (p, cout, 1, 1)]
                else:
                    convs = [(cin, p, 3, stride), (p, p, 3, 1)]
                blocks.append(_Residual(convs, groups, down))
                cin = cout
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            if stage < 4:
                x = authors_shuffle(x, self.groups)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _conv_layers(spec, cin: int, groups: int, first_dense: bool) -> tuple[list[nn.Module], int]:
    layers = []
    for v in spec:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        g = 1 if first_dense and not layers else groups
        layers += [nn.Conv2d(cin, v, 3, padding=1, groups=g), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        cin = v
    return layers, cin


class ReferenceVGG(nn.Module):
    """block0, block1, block2 (shuffles between them), flatten, classifier (Linear, ReLU, Dropout) x2 + Linear.

    ``widths`` are the 13 conv widths (the authors': 96, 112, 224, 224, 448, 448, 448, 896, 896, 896, 896,
    896, 512); the blocks hold convs 1-5, 6-9 and 10-13.
    """

    def __init__(self, widths, hidden: int = 4096, groups: int = 4, num_classes: int = 1000):
        super().__init__()
        w = widths
        self.groups = groups
        specs = [[w[0], w[1], "M", w[2], w[3], "M", w[4]], [w[5], w[6], "M", w[7], w[8]],
                 [w[9], "M", w[10], w[11], w[12], "M"]]
        cin = 3
        for b, spec in enumerate(specs):
            layers, cin = _conv_layers(spec, cin, groups, first_dense=b == 0)
            setattr(self, f"block{b}", nn.Sequential(*layers))
        self.grid = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 49, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        x = authors_shuffle(self.block0(x), self.groups)
        x = authors_shuffle(self.block1(x), self.groups)
        x = self.grid(self.block2(x))
        return self.classifier(x.flatten(1))
