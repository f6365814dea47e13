"""The own-data example's network: a small CNN whose width the study searches.

hpo passes the constructor the keywords it asks for among in_channels, num_classes, image_size
and activation (an nn.Module class), plus the study's [model.args] table (here: width).
"""

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16, activation=nn.ReLU):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            activation(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            activation(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))
