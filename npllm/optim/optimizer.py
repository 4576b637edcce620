"""`Optimizer`: param groups, `zero_grad` and state dicts shared by `AdamW` and `SGD`.

As in PyTorch, `param_groups` is a list of dicts, each with its "params" and its own
hyperparameters (set `group["lr"]` to follow a schedule). State is per parameter.

`state_dict()` mirrors PyTorch's layout with only NumPy arrays and plain Python scalars,
so a checkpoint can keep the arrays in safetensors and the rest in JSON:
    {"state": {index: {"step": int, name: np.ndarray, ...}},
     "param_groups": [{"lr": float, ..., "params": [index, ...]}]}
where `index` numbers the parameters through the groups in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from npllm.autograd.engine import Tensor
from npllm.errors import CheckpointError, ConfigError


class Optimizer:
    defaults: dict[str, Any]
    state_keys: tuple[str, ...] = ()  # the names in each parameter's state

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        params = list(params)
        if not params:
            raise ConfigError("the optimizer got an empty parameter list; pass model.parameters()")
        groups = params if isinstance(params[0], Mapping) else [{"params": params}]
        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for g in groups:
            group = {**defaults, **g, "params": list(g["params"])}
            for p in group["params"]:
                if not isinstance(p, Tensor):
                    raise ConfigError(
                        f"optimizers take Tensors (or dicts of them), got {type(p).__name__}"
                    )
                if id(p) in seen:
                    raise ConfigError(
                        "a parameter appears twice in the optimizer's groups; give each once"
                    )
                seen.add(id(p))
            self.param_groups.append(group)
        # per-parameter state, keyed by id(param); Tensors are not hashable by value
        self.state: dict[int, dict[str, Any]] = {}

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        """Drop every gradient (set to None, as PyTorch's default)."""
        for p in self._params():
            p.grad = None

    def step(self) -> None:
        raise NotImplementedError

    # ---- state dicts -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state: arrays are the live moment buffers, not copies."""
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {
            index[pid]: {k: (v if isinstance(v, np.ndarray) else _plain(v)) for k, v in s.items()}
            for pid, s in self.state.items()
            if pid in index
        }
        groups = [
            {
                **{k: _plain(v) for k, v in g.items() if k != "params"},
                "params": [index[id(p)] for p in g["params"]],
            }
            for g in self.param_groups
        ]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyperparameters and per-parameter state saved by `state_dict()` from an
        optimizer over parameters of the same shapes, in the same groups and order."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise CheckpointError(
                f"the optimizer state has {len(groups)} param groups but this optimizer has "
                f"{len(self.param_groups)}; build the optimizer as the saved run did"
            )
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise CheckpointError(
                    f"param group {i} holds {len(saved['params'])} parameters in the optimizer "
                    f"state but {len(own['params'])} here; build the optimizer as the saved "
                    "run did"
                )
        params = self._params()
        new_state: dict[int, dict[str, Any]] = {}
        for key, saved in state_dict["state"].items():
            i = int(key)  # JSON turns the int keys into strings
            if not 0 <= i < len(params):
                raise CheckpointError(f"optimizer state for parameter {i}, which does not exist")
            p = params[i]
            if set(saved) != set(self.state_keys):
                raise CheckpointError(
                    f"the optimizer state of parameter {i} holds {sorted(saved)}, but "
                    f"{type(self).__name__} keeps {sorted(self.state_keys)}; it was saved by "
                    "another optimizer"
                )
            entry: dict[str, Any] = {}
            for name, value in saved.items():
                if isinstance(value, (np.ndarray, Tensor)) or hasattr(value, "__array__"):
                    arr = np.asarray(value.data if isinstance(value, Tensor) else value)
                    if arr.shape != p.shape:
                        raise CheckpointError(
                            f"optimizer state {name!r} of parameter {i} has shape {arr.shape} "
                            f"but the parameter has {p.shape}; the state belongs to another model"
                        )
                    entry[name] = arr.astype(p.dtype, copy=True)
                else:
                    entry[name] = value
            new_state[id(p)] = entry
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    own[k] = tuple(v) if isinstance(v, list) else v
        self.state = new_state


def _plain(v: Any) -> Any:
    """NumPy scalars and tuples as plain Python values (JSON-friendly)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v
