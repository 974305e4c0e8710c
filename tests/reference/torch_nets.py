"""PyTorch references: what torchvision's and timm's networks compute (converter tests).

How these were built: written for this project, from the facts of the upstream
definitions (read, not copied): module attribute names and ``nn.Sequential``
indices (hence state_dict keys and their order), layer widths, kernels, strides,
paddings, pooling modes and BN epsilons of

- torchvision ``models/googlenet.py`` (``GoogLeNet``, ``transform_input=False``),
- torchvision ``models/inception.py`` ``Inception3``, whose module names timm's
  ``models/inception_v3.py`` ``InceptionV3`` keeps (timm's hub checkpoints other
  than ``tv_in1k`` simply lack ``AuxLogits``),
- timm ``models/inception_v4.py`` (``InceptionV4``),
- timm ``models/inception_resnet_v2.py`` (``InceptionResnetV2``),
- timm ``models/xception.py`` (``Xception``, registered as ``legacy_xception``),

at pytorch/vision 0413037a (googlenet.py) and 02a0a90b (inception.py) and
huggingface/pytorch-image-models aa4b5850. No upstream code is copied: the forward
passes are re-expressed with one generic conv-BN-ReLU module and per-module
``forward`` functions; weight initialisation, scripting
support, feature hooks and training-only paths (dropout, aux heads gated on
``training``) are left out. The models run in eval mode and return a dict of
logits (``"logits"`` plus ``"aux"``/``"aux1"``/``"aux2"`` where built), so aux heads
are compared too. ``tests/test_convert_torch.py`` checks every state_dict here
against the committed manifests (keys, shapes, order).

Upstream arithmetic these keep (the reason they exist): torchvision GoogLeNet pads
its 7x7/2 stem by 3 and max-pools with ``ceil_mode=True``; Inception3's branch
``avg_pool2d(3, 1, padding=1)`` counts the padding (``count_include_pad=True``);
timm's v4 and IRv2 exclude it (``count_include_pad=False``) and pad 0 unless told;
legacy Xception pools with ``MaxPool2d(3, 2, 1)`` and uses BN eps 1e-5 (every
other network here 1e-3).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    """torchvision ``BasicConv2d`` / timm ``ConvNormAct``: ``.conv``, ``.bn``, ReLU."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, eps=1e-3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _seq(*convs):
    return nn.Sequential(*convs)


def _cat(*xs):
    return torch.cat(xs, 1)


# --- torchvision GoogLeNet --------------------------------------------------------

class _GoogLeNetModule(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, proj):
        super().__init__()
        self.branch1 = ConvBN(cin, c1, 1)
        self.branch2 = _seq(ConvBN(cin, c3r, 1), ConvBN(c3r, c3, 3, padding=1))
        # torchvision's "5x5" branch is a 3x3 (its known deviation).
        self.branch3 = _seq(ConvBN(cin, c5r, 1), ConvBN(c5r, c5, 3, padding=1))
        self.branch4 = _seq(nn.MaxPool2d(3, 1, 1, ceil_mode=True), ConvBN(cin, proj, 1))

    def forward(self, x):
        return _cat(self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x))


class _GoogLeNetAux(nn.Module):
    def __init__(self, cin, classes):
        super().__init__()
        self.conv = ConvBN(cin, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, classes)

    def forward(self, x):
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class GoogLeNet(nn.Module):
    """torchvision ``googlenet`` (``transform_input=False``; aux heads when asked)."""

    _MODULES = (("inception3a", 192, 64, 96, 128, 16, 32, 32),
                ("inception3b", 256, 128, 128, 192, 32, 96, 64), "maxpool3",
                ("inception4a", 480, 192, 96, 208, 16, 48, 64),
                ("inception4b", 512, 160, 112, 224, 24, 64, 64),
                ("inception4c", 512, 128, 128, 256, 24, 64, 64),
                ("inception4d", 512, 112, 144, 288, 32, 64, 64),
                ("inception4e", 528, 256, 160, 320, 32, 128, 128), "maxpool4",
                ("inception5a", 832, 256, 160, 320, 32, 128, 128),
                ("inception5b", 832, 384, 192, 384, 48, 128, 128))

    def __init__(self, num_classes=1000, aux_logits=True):
        super().__init__()
        self.conv1 = ConvBN(3, 64, 7, 2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = ConvBN(64, 64, 1)
        self.conv3 = ConvBN(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        for spec in self._MODULES:
            if spec == "maxpool3":
                self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
            elif spec == "maxpool4":
                self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
            else:
                setattr(self, spec[0], _GoogLeNetModule(*spec[1:]))
        self.aux_logits = aux_logits
        if aux_logits:
            self.aux1 = _GoogLeNetAux(512, num_classes)
            self.aux2 = _GoogLeNetAux(528, num_classes)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        out = {}
        for spec in self._MODULES:
            name = spec if isinstance(spec, str) else spec[0]
            x = getattr(self, name)(x)
            if self.aux_logits and name in ("inception4a", "inception4d"):
                out["aux1" if name == "inception4a" else "aux2"] = \
                    getattr(self, "aux1" if name == "inception4a" else "aux2")(x)
        out["logits"] = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return out


# --- torchvision Inception3 / timm inception_v3 -----------------------------------

def _v3_pool(x):
    return F.avg_pool2d(x, 3, 1, padding=1)  # count_include_pad=True (the default)


class _V3A(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return _cat(self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                    self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                    self.branch_pool(_v3_pool(x)))


class _V3B(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, 2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, 2)

    def forward(self, x):
        return _cat(self.branch3x3(x),
                    self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                    F.max_pool2d(x, 3, 2))


class _V3C(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b2 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b3 = x
        for i in range(1, 6):
            b3 = getattr(self, f"branch7x7dbl_{i}")(b3)
        return _cat(self.branch1x1(x), b2, b3, self.branch_pool(_v3_pool(x)))


class _V3D(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, 2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, 2)

    def forward(self, x):
        b2 = x
        for i in range(1, 5):
            b2 = getattr(self, f"branch7x7x3_{i}")(b2)
        return _cat(self.branch3x3_2(self.branch3x3_1(x)), b2, F.max_pool2d(x, 3, 2))


class _V3E(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b2 = self.branch3x3_1(x)
        b3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return _cat(self.branch1x1(x), self.branch3x3_2a(b2), self.branch3x3_2b(b2),
                    self.branch3x3dbl_3a(b3), self.branch3x3dbl_3b(b3),
                    self.branch_pool(_v3_pool(x)))


class _V3Aux(nn.Module):
    def __init__(self, cin, classes):
        super().__init__()
        self.conv0 = ConvBN(cin, 128, 1)
        self.conv1 = ConvBN(128, 768, 5)
        self.fc = nn.Linear(768, classes)

    def forward(self, x):
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, 3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Inception3(nn.Module):
    """torchvision ``inception_v3`` (``transform_input=False``); timm's is the same."""

    def __init__(self, num_classes=1000, aux_logits=True):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, 2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = _V3A(192, 32)
        self.Mixed_5c = _V3A(256, 64)
        self.Mixed_5d = _V3A(288, 64)
        self.Mixed_6a = _V3B(288)
        self.Mixed_6b = _V3C(768, 128)
        self.Mixed_6c = _V3C(768, 160)
        self.Mixed_6d = _V3C(768, 160)
        self.Mixed_6e = _V3C(768, 192)
        self.AuxLogits = _V3Aux(768, num_classes) if aux_logits else None
        self.Mixed_7a = _V3D(768)
        self.Mixed_7b = _V3E(1280)
        self.Mixed_7c = _V3E(2048)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"):
            x = getattr(self, f"Mixed_{name}")(x)
        out = {} if self.AuxLogits is None else {"aux": self.AuxLogits(x)}
        for name in ("7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        out["logits"] = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return out


# --- timm inception_v4 ----------------------------------------------------------

def _avg_exclude_pad():
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


class _Branches(nn.Module):
    """Parallel ``branch0``, ``branch1``, ... concatenated (timm's v4/IRv2 modules)."""

    def __init__(self, *branches):
        super().__init__()
        for i, branch in enumerate(branches):
            setattr(self, f"branch{i}", branch)
        self.count = len(branches)

    def forward(self, x):
        return _cat(*(getattr(self, f"branch{i}")(x) for i in range(self.count)))


class _Mixed3a(nn.Module):
    def __init__(self):
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, 2)
        self.conv = ConvBN(64, 96, 3, 2)

    def forward(self, x):
        return _cat(self.maxpool(x), self.conv(x))


class _Mixed5a(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = ConvBN(192, 192, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return _cat(self.conv(x), self.maxpool(x))


def _v4_mixed4a():
    return _Branches(
        _seq(ConvBN(160, 64, 1), ConvBN(64, 96, 3)),
        _seq(ConvBN(160, 64, 1), ConvBN(64, 64, (1, 7), padding=(0, 3)),
             ConvBN(64, 64, (7, 1), padding=(3, 0)), ConvBN(64, 96, 3)))


def _v4_a():
    return _Branches(
        ConvBN(384, 96, 1),
        _seq(ConvBN(384, 64, 1), ConvBN(64, 96, 3, padding=1)),
        _seq(ConvBN(384, 64, 1), ConvBN(64, 96, 3, padding=1),
             ConvBN(96, 96, 3, padding=1)),
        _seq(_avg_exclude_pad(), ConvBN(384, 96, 1)))


def _v4_reduction_a():
    return _Branches(
        ConvBN(384, 384, 3, 2),
        _seq(ConvBN(384, 192, 1), ConvBN(192, 224, 3, padding=1),
             ConvBN(224, 256, 3, 2)),
        nn.MaxPool2d(3, 2))


def _v4_b():
    return _Branches(
        ConvBN(1024, 384, 1),
        _seq(ConvBN(1024, 192, 1), ConvBN(192, 224, (1, 7), padding=(0, 3)),
             ConvBN(224, 256, (7, 1), padding=(3, 0))),
        _seq(ConvBN(1024, 192, 1), ConvBN(192, 192, (7, 1), padding=(3, 0)),
             ConvBN(192, 224, (1, 7), padding=(0, 3)),
             ConvBN(224, 224, (7, 1), padding=(3, 0)),
             ConvBN(224, 256, (1, 7), padding=(0, 3))),
        _seq(_avg_exclude_pad(), ConvBN(1024, 128, 1)))


def _v4_reduction_b():
    return _Branches(
        _seq(ConvBN(1024, 192, 1), ConvBN(192, 192, 3, 2)),
        _seq(ConvBN(1024, 256, 1), ConvBN(256, 256, (1, 7), padding=(0, 3)),
             ConvBN(256, 320, (7, 1), padding=(3, 0)), ConvBN(320, 320, 3, 2)),
        nn.MaxPool2d(3, 2))


class _V4C(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBN(1536, 256, 1)
        self.branch1_0 = ConvBN(1536, 384, 1)
        self.branch1_1a = ConvBN(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = ConvBN(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = ConvBN(1536, 384, 1)
        self.branch2_1 = ConvBN(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = ConvBN(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = ConvBN(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = ConvBN(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = _seq(_avg_exclude_pad(), ConvBN(1536, 256, 1))

    def forward(self, x):
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return _cat(self.branch0(x), self.branch1_1a(b1), self.branch1_1b(b1),
                    self.branch2_3a(b2), self.branch2_3b(b2), self.branch3(x))


class InceptionV4(nn.Module):
    """timm ``inception_v4`` (no aux head)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = _seq(
            ConvBN(3, 32, 3, 2), ConvBN(32, 32, 3), ConvBN(32, 64, 3, padding=1),
            _Mixed3a(), _v4_mixed4a(), _Mixed5a(),
            *(_v4_a() for _ in range(4)), _v4_reduction_a(),
            *(_v4_b() for _ in range(7)), _v4_reduction_b(),
            *(_V4C() for _ in range(3)))
        self.last_linear = nn.Linear(1536, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return {"logits": self.last_linear(torch.flatten(x, 1))}


# --- timm inception_resnet_v2 ---------------------------------------------------

class _Residual(_Branches):
    """timm's Block35/17/8: branches, biased 1x1 ``conv2d``, ``x + scale * up``, ReLU."""

    def __init__(self, width, scale, *branches, relu=True):
        super().__init__(*branches)
        mixed = sum(_out_channels(b) for b in branches)
        self.conv2d = nn.Conv2d(mixed, width, 1)
        self.scale, self.relu = scale, relu

    def forward(self, x):
        out = x + self.conv2d(super().forward(x)) * self.scale
        return F.relu(out) if self.relu else out


def _out_channels(module):
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _block35():
    return _Residual(
        320, 0.17, ConvBN(320, 32, 1),
        _seq(ConvBN(320, 32, 1), ConvBN(32, 32, 3, padding=1)),
        _seq(ConvBN(320, 32, 1), ConvBN(32, 48, 3, padding=1),
             ConvBN(48, 64, 3, padding=1)))


def _block17():
    return _Residual(
        1088, 0.10, ConvBN(1088, 192, 1),
        _seq(ConvBN(1088, 128, 1), ConvBN(128, 160, (1, 7), padding=(0, 3)),
             ConvBN(160, 192, (7, 1), padding=(3, 0))))


def _block8(scale=0.20, relu=True):
    return _Residual(
        2080, scale, ConvBN(2080, 192, 1),
        _seq(ConvBN(2080, 192, 1), ConvBN(192, 224, (1, 3), padding=(0, 1)),
             ConvBN(224, 256, (3, 1), padding=(1, 0))), relu=relu)


class InceptionResnetV2(nn.Module):
    """timm ``inception_resnet_v2`` (no aux head)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv2d_1a = ConvBN(3, 32, 3, 2)
        self.conv2d_2a = ConvBN(32, 32, 3)
        self.conv2d_2b = ConvBN(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, 2)
        self.conv2d_3b = ConvBN(64, 80, 1)
        self.conv2d_4a = ConvBN(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, 2)
        self.mixed_5b = _Branches(
            ConvBN(192, 96, 1),
            _seq(ConvBN(192, 48, 1), ConvBN(48, 64, 5, padding=2)),
            _seq(ConvBN(192, 64, 1), ConvBN(64, 96, 3, padding=1),
                 ConvBN(96, 96, 3, padding=1)),
            _seq(_avg_exclude_pad(), ConvBN(192, 64, 1)))
        self.repeat = _seq(*(_block35() for _ in range(10)))
        self.mixed_6a = _Branches(
            ConvBN(320, 384, 3, 2),
            _seq(ConvBN(320, 256, 1), ConvBN(256, 256, 3, padding=1),
                 ConvBN(256, 384, 3, 2)),
            nn.MaxPool2d(3, 2))
        self.repeat_1 = _seq(*(_block17() for _ in range(20)))
        self.mixed_7a = _Branches(
            _seq(ConvBN(1088, 256, 1), ConvBN(256, 384, 3, 2)),
            _seq(ConvBN(1088, 256, 1), ConvBN(256, 288, 3, 2)),
            _seq(ConvBN(1088, 256, 1), ConvBN(256, 288, 3, padding=1),
                 ConvBN(288, 320, 3, 2)),
            nn.MaxPool2d(3, 2))
        self.repeat_2 = _seq(*(_block8() for _ in range(9)))
        self.block8 = _block8(scale=1.0, relu=False)
        self.conv2d_7b = ConvBN(2080, 1536, 1)
        self.classif = nn.Linear(1536, num_classes)

    def forward(self, x):
        for name, _ in self.named_children():
            if name == "classif":
                break
            x = getattr(self, name)(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return {"logits": self.classif(x)}


# --- timm legacy_xception -------------------------------------------------------

class _SeparableConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.conv1(x))


class _XceptionBlock(nn.Module):
    """``skip``/``skipbn`` (strided or widening blocks), then ``rep``: [ReLU, sep, BN]
    per conv (the first ReLU dropped unless ``relu_first``), then MaxPool2d(3, s, 1)."""

    def __init__(self, cin, cout, reps, stride=1, relu_first=True, grow_first=True):
        super().__init__()
        self.skip = None
        if cout != cin or stride != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(cout)
        rep = []
        for i in range(reps):
            if grow_first:
                a, b = (cin if i == 0 else cout), cout
            else:
                a, b = cin, (cin if i < reps - 1 else cout)
            rep += [nn.ReLU(), _SeparableConv(a, b), nn.BatchNorm2d(b)]
        if not relu_first:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = _seq(*rep)

    def forward(self, x):
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


class Xception(nn.Module):
    """timm ``legacy_xception`` (BN eps 1e-5: torch's default)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.block1 = _XceptionBlock(64, 128, 2, 2, relu_first=False)
        self.block2 = _XceptionBlock(128, 256, 2, 2)
        self.block3 = _XceptionBlock(256, 728, 2, 2)
        for i in range(4, 12):
            setattr(self, f"block{i}", _XceptionBlock(728, 728, 3, 1))
        self.block12 = _XceptionBlock(728, 1024, 2, 2, grow_first=False)
        self.conv3 = _SeparableConv(1024, 1536)
        self.bn3 = nn.BatchNorm2d(1536)
        self.conv4 = _SeparableConv(1536, 2048)
        self.bn4 = nn.BatchNorm2d(2048)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        return {"logits": self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))}


# --- deterministic weights ------------------------------------------------------

def randomize(model: nn.Module, seed: int = 0, damp=()) -> nn.Module:
    """Sets every parameter and BN statistic from a seeded generator, in eval mode.

    He-scaled kernels; BN gammas in +-[0.7, 1.3] (about one in ten negative, so the
    converter's gamma folding is exercised with either sign), betas and means near 0,
    variances near 1; ``damp``: BNs (by state_dict prefix) whose gamma is scaled by
    0.1 (the last BN of a residual branch, so deep nets keep logits of order one).
    """
    rng = np.random.default_rng(seed)  # NumPy draws float32 faster than torch here

    def normal(like, std):
        draw = rng.standard_normal(tuple(like.shape), np.float32)
        return torch.from_numpy(draw * np.float32(std))

    def uniform(like, low, high):
        draw = rng.uniform(low, high, tuple(like.shape))
        return torch.from_numpy(draw.astype(np.float32))

    def put(tensor, value):
        tensor.data = value  # no copy: the draws become the storage

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            # He gain for convs a ReLU follows; none after a depthwise conv.
            gain = 1.0 if module.groups > 1 else 2.0
            put(module.weight, normal(module.weight, math.sqrt(gain / fan_in)))
            if module.bias is not None:
                put(module.bias, normal(module.bias, 0.01))
        elif isinstance(module, nn.Linear):
            fan_in = module.weight.shape[1]
            put(module.weight, normal(module.weight, math.sqrt(1.0 / fan_in)))
            put(module.bias, normal(module.bias, 0.01))
        elif isinstance(module, nn.BatchNorm2d):
            gamma = uniform(module.weight, 0.7, 1.3)
            gamma[uniform(gamma, 0, 1) < 0.1] *= -1
            put(module.weight, gamma * (0.1 if name in damp else 1.0))
            put(module.bias, normal(module.bias, 0.05))
            put(module.running_mean, normal(module.running_mean, 0.05))
            put(module.running_var, uniform(module.running_var, 0.8, 1.2))
            module.num_batches_tracked.fill_(1000)
    return model.eval()


# The last BN of each identity-shortcut (middle flow) block of :class:`Xception`.
XCEPTION_RESIDUAL_BNS = frozenset(f"block{i}.rep.8" for i in range(4, 12))


def build(name: str, seed: int = 0) -> nn.Module:
    """A randomized reference in eval mode: ``googlenet`` and ``inception_v3`` with
    their aux heads, ``inception_v4``, ``inception_resnet_v2``, ``xception``."""
    if name == "googlenet":
        return randomize(GoogLeNet(aux_logits=True), seed)
    if name == "inception_v3":
        return randomize(Inception3(aux_logits=True), seed)
    if name == "inception_v4":
        return randomize(InceptionV4(), seed)
    if name == "inception_resnet_v2":
        return randomize(InceptionResnetV2(), seed)
    if name == "xception":
        return randomize(Xception(), seed, damp=XCEPTION_RESIDUAL_BNS)
    raise ValueError(f"No torch reference for {name!r}.")
