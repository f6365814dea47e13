"""Network definitions by name (the names are declared in hpo.config), and your own nets
("file.py:Class", loaded by hpo.training.custom). Input channels, image size and classes come from
the dataset (``hpo.training.data.describe``)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from hpo.config import StudySpec, TrainConfig, net_reference, variants
from hpo.errors import HpoError
from hpo.training import custom
from hpo.training.data import describe
from hpo.training.datasets import DatasetInfo

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class LeNet5(nn.Module):
    """The classic table: conv 6@5x5, pool, conv 16@5x5, pool, 120, 84, classes.

    LeNet was drawn for 32x32 inputs; smaller images (Fashion-MNIST's 28x28) are zero-padded in
    the first convolution so every later layer keeps the classic shape.
    """

    def __init__(self, channels: int, size: int, num_classes: int, act: str = "relu"):
        super().__init__()
        pad = max(0, (32 - size) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad),
            activation(act),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            activation(act),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            activation(act),
            nn.Linear(120, 84),
            activation(act),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class SimpleCNN(nn.Module):
    """The coursework's small CNN: conv 16/32/64 3x3, each with 2x2 pooling, fc 500, dropout 0.3."""

    def __init__(self, channels: int, size: int, num_classes: int, act: str = "relu"):
        super().__init__()
        layers, width = [], channels
        for out in (16, 32, 64):
            layers += [nn.Conv2d(width, out, 3, padding=1), activation(act), nn.MaxPool2d(2)]
            width = out
        self.features = nn.Sequential(*layers)
        side = size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 500),
            activation(act),
            nn.Dropout(0.3),
            nn.Linear(500, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def resnet18(channels: int, size: int, num_classes: int, act: str = "relu") -> nn.Module:
    """ResNet-18, CIFAR variant: torchvision's blocks with a 3x3 stride-1 stem and no max-pool
    (the ImageNet stem would shrink a 32x32 image to 8x8 before the first block)."""
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    for module in model.modules():  # ResNet and every BasicBlock call self.relu
        if hasattr(module, "relu"):
            module.relu = activation(act)
    return model


NETS = {"lenet5": LeNet5, "simple_cnn": SimpleCNN, "resnet18": resnet18}


def build(name: str, channels: int, size: int, num_classes: int, act: str = "relu", args: tuple = ()) -> nn.Module:
    """The net ``name`` (a name hpo.config has checked) for the dataset's shape; ``args``: your own
    net's [model.args]."""
    if net_reference(name):
        return custom.build(name, channels, size, num_classes, ACTIVATIONS[act], args)
    return NETS[name](channels, size, num_classes, act)


def build_for(config: TrainConfig, info: DatasetInfo) -> nn.Module:
    """``config``'s net for a dataset of ``info``'s shape."""
    m = config.model
    return build(m.name, info.channels, info.size, info.num_classes, m.activation, m.args)


def net_variants(spec: StudySpec, root=None) -> list[tuple[str, TrainConfig, DatasetInfo]]:
    """The distinct nets a study can build (base, each searched choice and range end), each once,
    named by where it comes from, with the shape it is built for."""
    seen, out = set(), []
    for where, config in variants(spec):
        info = describe(config.data, root)  # without loading the data: an image folder's from its cache
        key = (config.model, info)
        if key not in seen:
            seen.add(key)
            out.append((where, config, info))
    return out


def built(where: str, config: TrainConfig, info: DatasetInfo) -> nn.Module:
    """``build_for``, a net that cannot be built naming the searched value (``where``) it was built for."""
    try:
        return build_for(config, info)
    except HpoError as e:
        raise HpoError(f"{e} (in {where})" if where else str(e)) from None


def check(spec: StudySpec, root=None) -> None:
    """Every net the study can build, built for the dataset's shape (``root``: the data folder) and
    run on one batch of it, before any trial: each way one can fail is one HpoError (LeNet-5
    on 64x64 images included). The global RNG is left as it was (a trial seeds its own init)."""
    with torch.random.fork_rng(devices=[]):
        for where, config, info in net_variants(spec, root):
            model = built(where, config, info)
            try:
                custom.check_output(model, config.model.name, info.channels, info.size, info.num_classes, where)
            except HpoError as e:
                if net_reference(config.model.name) or info.size <= 32:
                    raise
                raise HpoError(
                    f"{e}; {config.model.name} is drawn for images of at most 32 pixels: set data.image_size = 32, "
                    f"or use simple_cnn or resnet18"
                ) from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
