"""hpo.training.nets: every registered net over every dataset's image shape, and every activation."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from hpo import config
from hpo.errors import HpoError
from hpo.training import nets
from hpo.training.datasets import DATASETS

# The shapes the nets must take come from the dataset registry: (channels, size, classes).
SHAPES = {name: (info.channels, info.size, info.num_classes) for name, info in DATASETS.items()}
ACTIVATION_TYPES = tuple(nets.ACTIVATIONS.values())


@pytest.fixture(autouse=True)
def one_thread(restore_threads):
    torch.set_num_threads(1)  # a shared machine: see the hpo.train block of conftest.py


def build(name, dataset="fashion_mnist", act="relu", seed=0):
    torch.manual_seed(seed)
    channels, size, classes = SHAPES[dataset]
    return nets.build(name, channels, size, classes, act)


def batch(dataset, n=4, seed=0):
    channels, size, classes = SHAPES[dataset]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def of_type(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


# ---------------------------------------------------------------- every net x every dataset shape


def test_shapes_cover_both_kinds_of_image():
    assert {SHAPES[d][:2] for d in SHAPES} >= {(1, 28), (3, 32)}


@pytest.mark.parametrize("dataset", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_output_shape(name, dataset):
    model = build(name, dataset)
    x, _ = batch(dataset, n=3)
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (3, SHAPES[dataset][2])
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("dataset", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_one_sgd_step(name, dataset):
    model = build(name, dataset)
    model.train()
    x, y = batch(dataset)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for key, p in model.named_parameters():  # every parameter is on the path from input to loss
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    optimizer.step()
    changed = [k for k, p in model.named_parameters() if not torch.equal(p, before[k])]
    assert len(changed) == len(before), f"unchanged after a step: {sorted(set(before) - set(changed))}"
    with torch.no_grad():
        assert torch.isfinite(nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_build_is_seeded(name):
    a, b, c = build(name, seed=1), build(name, seed=1), build(name, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# ---------------------------------------------------------------- the activation switch


@pytest.mark.parametrize("act", sorted(nets.ACTIVATIONS))
@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_activation_switch_replaces_every_module(name, act, monkeypatch):
    model = build(name, "cifar10", act=act)
    chosen = nets.ACTIVATIONS[act]
    found = of_type(model, ACTIVATION_TYPES)
    assert found and all(type(m) is chosen for m in found), {type(m).__name__ for m in found}
    if name == "resnet18":  # the stem's and every BasicBlock's (torchvision's blocks call self.relu)
        blocks = of_type(model, BasicBlock)
        assert len(blocks) == 8 and all(type(b.relu) is chosen for b in blocks)
        assert type(model.relu) is chosen
    if act != "relu":
        assert not of_type(model, nn.ReLU)

        # Nothing applies a ReLU in the forward pass either (a functional call would slip past
        # the module check): make every ReLU entry point fail, then run the net.
        def no_relu(*args, **kwargs):
            raise AssertionError(f"a ReLU ran in {name} with activation {act!r}")

        for module, attr in ((nn.functional, "relu"), (nn.functional, "relu_"), (torch, "relu"), (torch, "relu_")):
            monkeypatch.setattr(module, attr, no_relu)
        x, _ = batch("cifar10", n=2)
        model(x)


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_activation_changes_the_function(name):
    """Same seed, same weights, different activation: a different output (the switch is live)."""
    x, _ = batch("fashion_mnist", n=2)
    outs = {}
    for act in ("relu", "tanh"):
        model = build(name, act=act).eval()
        with torch.no_grad():
            outs[act] = model(x)
    assert not torch.allclose(outs["relu"], outs["tanh"])


def test_default_activation_is_relu():
    for name in nets.NETS:
        model = nets.NETS[name](1, 28, 10)
        found = of_type(model, ACTIVATION_TYPES)
        assert found and all(type(m) is nn.ReLU for m in found)


def test_activation_by_name():
    for name, cls in nets.ACTIVATIONS.items():
        a, b = nets.activation(name), nets.activation(name)
        assert type(a) is cls and a is not b  # a fresh module each time, never a shared one


def test_registries_implement_exactly_the_declared_names():
    assert set(nets.NETS) == set(config.declared(config.ModelSpec, "name"))
    assert set(nets.ACTIVATIONS) == set(config.declared(config.ModelSpec, "activation"))


def _validated(**model):
    """A name is checked once, where the settings are read (hpo.config), never again in nets."""
    config.validate(config.TrainConfig(model=config.ModelSpec(**model)))


def test_unknown_activation_lists_the_known_ones():
    known = ", ".join(sorted(nets.ACTIVATIONS))
    with pytest.raises(
        HpoError, match=f"unknown model.activation 'relux' \\(did you mean 'relu'\\?\\); choose one of: {known}$"
    ):
        _validated(activation="relux")
    with pytest.raises(HpoError, match="unknown model.activation 'swish'"):
        _validated(name="lenet5", activation="swish")


def test_unknown_net_lists_the_known_ones():
    with pytest.raises(HpoError) as info:
        _validated(name="lenet6")
    message = str(info.value)
    assert (
        message == "unknown model.name 'lenet6' (did you mean 'lenet5'?); choose one of: lenet5, resnet18, simple_cnn"
    )
    assert "\n" not in message and all(name in message for name in nets.NETS)


# ---------------------------------------------------------------- each net against its table


def layers(model):
    convs = [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding) for m in of_type(model, nn.Conv2d)]
    linears = [(m.in_features, m.out_features) for m in of_type(model, nn.Linear)]
    return convs, linears


def test_lenet5_classic_table():
    convs, linears = layers(nets.build("lenet5", 1, 32, 10))
    assert convs == [(1, 6, (5, 5), (1, 1), (0, 0)), (6, 16, (5, 5), (1, 1), (0, 0))]
    assert linears == [(16 * 5 * 5, 120), (120, 84), (84, 10)]
    # By hand: weights + biases of each layer, for a 1x32x32 input.
    by_hand = (
        (1 * 5 * 5 * 6 + 6)  # conv1: 156
        + (6 * 5 * 5 * 16 + 16)  # conv2: 2,416
        + (16 * 5 * 5 * 120 + 120)  # fc 120: 48,120
        + (120 * 84 + 84)  # fc 84: 10,164
        + (84 * 10 + 10)  # fc 10: 850
    )
    assert by_hand == 61_706
    assert nets.count_parameters(nets.build("lenet5", 1, 32, 10)) == by_hand


def test_lenet5_pads_28x28_to_the_classic_shape():
    model = nets.build("lenet5", 1, 28, 10)
    assert nets.count_parameters(model) == 61_706  # the same table: padding adds no parameter
    assert model.features[0].padding == (2, 2)
    assert model.features(torch.zeros(1, 1, 28, 28)).shape == (1, 16, 5, 5)  # as a 32x32 input would give
    cifar = nets.build("lenet5", 3, 32, 10)
    assert nets.count_parameters(cifar) == 61_706 + 2 * 5 * 5 * 6  # two more input channels in conv1
    assert cifar.features(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 5, 5)


@pytest.mark.parametrize("dataset", sorted(SHAPES))
def test_simple_cnn_table(dataset):
    channels, size, classes = SHAPES[dataset]
    model = nets.build("simple_cnn", channels, size, classes)
    convs, linears = layers(model)
    assert [(c[1], c[2]) for c in convs] == [(16, (3, 3)), (32, (3, 3)), (64, (3, 3))]
    assert [c[0] for c in convs] == [channels, 16, 32]
    assert all(c[3:] == ((1, 1), (1, 1)) for c in convs)  # "same" convolutions, pooling does the shrinking
    assert len(of_type(model, nn.MaxPool2d)) == 3
    side = size // 8  # three 2x2 poolings: 28 -> 14 -> 7 -> 3, 32 -> 16 -> 8 -> 4
    assert linears == [(64 * side * side, 500), (500, classes)]
    drops = of_type(model, nn.Dropout)
    assert [d.p for d in drops] == [0.3]


def test_resnet18_cifar_stem():
    model = nets.build("resnet18", 3, 32, 10)
    stem = model.conv1
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (
        3,
        64,
        (3, 3),
        (1, 1),
        (1, 1),
    )
    assert stem.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    seen = {}

    def record(name):
        def hook(module, args, out=None):  # returns None: the hook only looks
            seen[name] = (args[0] if out is None else out).shape

        return hook

    model.layer1.register_forward_pre_hook(record("layer1"))
    model.layer4.register_forward_hook(record("layer4"))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, 3, 32, 32))
    assert seen["layer1"] == (2, 64, 32, 32)  # full resolution into the first block
    assert seen["layer4"] == (2, 512, 4, 4)


def test_resnet18_parameter_count():
    model = nets.build("resnet18", 3, 32, 10)
    # torchvision's ImageNet ResNet-18 with a 10-way head, less its 7x7 stem, plus a 3x3 one.
    reference = torchvision.models.resnet18(num_classes=10)
    expected = nets.count_parameters(reference) - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64
    assert nets.count_parameters(model) == expected == 11_173_962  # ~11.17M
    assert len(of_type(model, BasicBlock)) == 8
    assert nets.count_parameters(nets.build("resnet18", 1, 28, 10)) == 11_173_962 - 2 * 3 * 3 * 64


def test_count_parameters_skips_frozen():
    model = nets.build("lenet5", 1, 32, 10)
    for p in model.features.parameters():
        p.requires_grad_(False)
    assert nets.count_parameters(model) == 61_706 - 156 - 2_416
