"""`Module`: the container every layer and the GPT build on, plus `ModuleList` and
`ModuleDict` for nanoGPT-shaped names (`transformer.h.0.attn.c_attn.weight`).

A module's state is its attributes: every `Tensor` attribute is a parameter, every
`Module` attribute a child, both named by the attribute name. As in PyTorch, names are
listed module by module, depth first, a module's own parameters before its children's.
Intermediate tensors are therefore never kept as attributes. Two attributes holding the
same `Tensor` object (the tied `wte`/`lm_head` weight) are one parameter: `parameters()`
yields it once, `state_dict()` lists it under both names, as PyTorch does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from npllm.autograd.engine import Tensor
from npllm.errors import CheckpointError, ConfigError


class LoadResult(NamedTuple):
    """What `load_state_dict(strict=False)` skipped."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of layers: parameters, state dicts, train/eval mode, `__call__`."""

    def __init__(self) -> None:
        self.training = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ---- the tree ------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def _own_tensors(self) -> Iterator[tuple[str, Tensor]]:
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                yield name, value

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, depth first, with dotted names."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def _named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """Every parameter slot, tied ones once per name."""
        for prefix, module in self.named_modules():
            for name, t in module._own_tensors():
                yield (f"{prefix}.{name}" if prefix else name), t

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """Each parameter once, under the first name it was reached by."""
        seen: set[int] = set()
        for name, t in self._named_tensors():
            if id(t) not in seen:
                seen.add(id(t))
                yield name, t

    def parameters(self) -> list[Tensor]:
        return [t for _, t in self.named_parameters()]

    # ---- state dicts ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> the parameter's array itself (not a copy, as in PyTorch: copy the values
        to keep a snapshot). Tied parameters appear under each of their names."""
        return {name: t.data for name, t in self._named_tensors()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy `state_dict`'s values (NumPy arrays, Tensors, anything `np.asarray` takes)
        into the existing parameter arrays in place, so ties and optimizer references
        survive; values are cast to each parameter's dtype. With `strict`, missing and
        unexpected keys are errors; a shape mismatch always is."""
        own = dict(self._named_tensors())
        values = {
            k: (v.data if isinstance(v, Tensor) else np.asarray(v)) for k, v in state_dict.items()
        }
        missing = [k for k in own if k not in values]
        unexpected = [k for k in values if k not in own]
        problems = [
            f"shape mismatch for {k!r}: the model has {own[k].shape}, the state dict "
            f"{values[k].shape}"
            for k in own
            if k in values and values[k].shape != own[k].shape
        ]
        problems += _tie_conflicts(own, values)
        if strict and missing:
            problems.append(f"missing keys: {_names(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {_names(unexpected)}")
        if problems:
            raise CheckpointError(
                f"cannot load the state dict into {type(self).__name__}: "
                + "; ".join(problems)
                + ". Load weights saved from a model with the same config"
                + ("" if not strict else ", or pass strict=False to skip missing/unexpected keys")
            )
        for k, t in own.items():
            if k in values:
                np.copyto(t.data, values[k], casting="same_kind")
        return LoadResult(missing, unexpected)

    # ---- modes, gradients, dtype -----------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        """Drop every gradient (None, as PyTorch's set_to_none): the next backward assigns
        fresh arrays instead of adding into old ones."""
        for p in self.parameters():
            p.grad = None

    def to(self, dtype: Any) -> Module:
        """Cast every parameter (and gradient) to `dtype` in place of its array; the Tensor
        objects stay, so ties and references to them survive. Use float64 for gradcheck."""
        dtype = np.dtype(dtype)
        if not np.issubdtype(dtype, np.floating):
            raise ConfigError(f"Module.to needs a floating dtype (float32 or float64), got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype, copy=False)
            if p.grad is not None:
                p.grad = p.grad.astype(dtype, copy=False)
        return self

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def __repr__(self) -> str:
        children = [f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self.named_children()]
        extra = self.extra_repr()
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = ([f"  {extra}"] if extra else []) + children
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"

    def extra_repr(self) -> str:
        return ""


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _tie_conflicts(own: dict[str, Tensor], values: dict[str, np.ndarray]) -> list[str]:
    """Names sharing one parameter must not bring different values: the later copy would
    silently overwrite the earlier (e.g. an untied checkpoint loaded into a tied model)."""
    first: dict[int, str] = {}
    problems = []
    for k, t in own.items():
        if k not in values or values[k].shape != t.shape:
            continue
        if id(t) in first:
            other = first[id(t)]
            if not np.array_equal(values[other], values[k]):
                problems.append(
                    f"{other!r} and {k!r} are one tied parameter in the model but differ in "
                    "the state dict"
                )
        else:
            first[id(t)] = k
    return problems


class ModuleList(Module):
    """A list of modules named "0", "1", ... (nanoGPT's `transformer.h`)."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        self._items: list[Module] = list(modules)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, m in enumerate(self._items):
            yield str(i), m

    def __getitem__(self, i: int) -> Module:
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items)

    def append(self, module: Module) -> None:
        self._items.append(module)


class ModuleDict(Module):
    """Named children given as keyword arguments (nanoGPT's `transformer`)."""

    def __init__(self, **modules: Module) -> None:
        super().__init__()
        for name, m in modules.items():
            setattr(self, name, m)
