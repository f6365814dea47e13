"""Your own network: ``model.name = "net.py:TinyNet"`` (a file, made absolute by hpo.config) or
``"package.module:Class"`` (anything importable).

The class gets the keyword arguments its constructor takes among in_channels, num_classes,
image_size and activation (an ``nn.Module`` class such as ``nn.ReLU``; a ``**kwargs`` constructor
gets all four), plus [model.args]. Each way a reference can be wrong is one HpoError naming the
file (and line); ``check_output`` adds the forward pass hpo.training.nets.check runs before any trial.

A file is read once per process: its bytes are hashed and those bytes are what runs, so the
recorded sha256 (``source``) is the code that trained.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hpo.config import is_net_file, net_reference
from hpo.errors import HpoError, closest, reason

PROVIDED = ("in_channels", "num_classes", "image_size", "activation")  # what hpo passes from the data and [model]


@dataclass(frozen=True)
class Source:
    path: str  # absolute: where the file was found
    sha256: str


_LOADED: dict[str, tuple[types.ModuleType, Source]] = {}  # by the reference's file or module


def source(name: str) -> Source | None:
    """The file a custom net comes from and its hash; None for a built-in name."""
    ref = net_reference(name)
    return _module(ref[0])[1] if ref else None


def _module(where: str) -> tuple[types.ModuleType, Source]:
    if where not in _LOADED:
        _LOADED[where] = _from_file(Path(where)) if is_net_file(where) else _from_import(where)
    return _LOADED[where]


def _from_file(path: Path) -> tuple[types.ModuleType, Source]:
    try:
        code = path.read_bytes()
    except FileNotFoundError:
        raise HpoError(
            f"model.name: no file {path} (a net file is found relative to the study folder, or give an absolute path)"
        ) from None
    except OSError as e:
        raise HpoError(f"model.name: cannot read {path}: {e.strerror or e}") from None
    digest = hashlib.sha256(code).hexdigest()
    try:
        compiled = compile(code, str(path), "exec")
    except SyntaxError as e:
        raise HpoError(f"{path} line {e.lineno}: {e.msg} (a syntax error in your net's file)") from None
    module = types.ModuleType(f"hpo_net_{path.stem}_{digest[:12]}")  # one module per content, never a stale one
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses and pickling look classes up there
    sys.path.insert(0, str(path.parent))  # as for a script: the file may import its neighbours
    try:
        exec(compiled, module.__dict__)
    except Exception as e:
        del sys.modules[module.__name__]
        raise HpoError(f"{path}{_line(e, str(path))} fails to import: {reason(e, typed=True)}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module, Source(str(path), digest)


def _from_import(name: str) -> tuple[types.ModuleType, Source]:
    try:
        module = importlib.import_module(name)
    except SyntaxError as e:
        raise HpoError(f"{e.filename} line {e.lineno}: {e.msg} (a syntax error in module {name})") from None
    except ModuleNotFoundError as e:
        raise HpoError(
            f"model.name: cannot import {name} ({reason(e)}); put the folder that holds it on PYTHONPATH"
        ) from None
    except Exception as e:
        raise HpoError(f"module {name} fails to import: {reason(e, typed=True)}") from None
    path = Path(module.__file__ or name).resolve()
    return module, Source(str(path), hashlib.sha256(path.read_bytes()).hexdigest())


def _line(error: BaseException, filename: str) -> str:
    """ " line N": the deepest line of ``filename`` the error passed through ("" if none)."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == filename]
    return f" line {lines[-1]}" if lines else ""


def net_class(name: str) -> type[nn.Module]:
    where, cls_name = net_reference(name)
    module, found = _module(where)
    cls = getattr(module, cls_name, None)
    if cls is None:
        classes = sorted(n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__)
        raise HpoError(
            f"{found.path} defines no {cls_name}{closest(cls_name, classes)}; "
            f"classes there: {', '.join(classes) or 'none'}"
        )
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        what = "a class" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise HpoError(f"{name} is {what}, not a torch.nn.Module subclass: hpo trains an nn.Module")
    return cls


def build(
    name: str, channels: int, size: int, num_classes: int, activation: type[nn.Module], args: tuple = ()
) -> nn.Module:
    """The net ``name`` ("file.py:Class", "pkg.mod:Class") for the dataset's shape."""
    cls = net_class(name)
    given = {"in_channels": channels, "num_classes": num_classes, "image_size": size, "activation": activation}
    kwargs = _kwargs(cls, name, given, dict(args))
    try:
        return cls(**kwargs)
    except Exception as e:
        shown = ", ".join(f"{k}={v.__name__ if isinstance(v, type) else repr(v)}" for k, v in kwargs.items())
        raise HpoError(f"{name}: {cls.__name__}({shown}) raised {reason(e, typed=True)}") from None


def _kwargs(cls: type, name: str, given: dict, args: dict) -> dict:
    """What the constructor takes of hpo's four, plus every [model.args] entry (each must be one it takes)."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read: hand it everything
        return {**given, **args}
    takes_all = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in args:
        if key in PROVIDED:
            raise HpoError(f"model.args.{key}: hpo passes {key} itself (from the dataset and [model]); drop it")
        if not takes_all and key not in params:
            known = [p for p in params if p not in PROVIDED]
            raise HpoError(
                f"model.args.{key} is not an argument of {name}{closest(key, known)}; "
                f"its arguments: {', '.join(known) or 'none'}"
            )
    return {**{k: v for k, v in given.items() if takes_all or k in params}, **args}


def check_output(model: nn.Module, name: str, channels: int, size: int, num_classes: int, where: str = "") -> None:
    """One forward pass of a batch of two images of the dataset's shape: it runs, and gives (2, num_classes)."""
    at = f" (in {where})" if where else ""
    shape = (2, channels, size, size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise HpoError(f"{name}: forward on a batch of shape {shape} raised {reason(e, typed=True)}{at}") from None
    if not isinstance(out, torch.Tensor):
        raise HpoError(f"{name}: forward gave a {type(out).__name__}, not a tensor of shape (2, {num_classes}){at}")
    if tuple(out.shape) != (2, num_classes):
        raise HpoError(
            f"{name}: forward on a batch of shape {shape} gave shape {tuple(out.shape)}; "
            f"hpo needs (batch, num_classes) = (2, {num_classes}){at}"
        )
