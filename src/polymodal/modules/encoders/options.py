"""Encoder options from YAML, checked against the constructor's own type hints before anything is built.

Options reach a constructor straight from a config file, so ``width: 0`` or ``image_size: "224"`` used
to surface as a ZeroDivisionError or a string-formatting TypeError from deep inside torch's weight
initialisation. The constructor signature already says what each option is; this reads it, converts
what converts losslessly (``"224"`` -> 224) and names the option otherwise.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from polymodal.errors import ConfigError

# integer sizes are >= 1 except these, where 0 has a meaning (no blocks, token id 0)
_MAY_BE_ZERO = frozenset({"depth", "pad_id"})
_PROBABILITIES = frozenset({"dropout"})  # in [0, 1)
_POSITIVE_FLOATS = frozenset({"mlp_ratio", "norm_eps"})


def checked_options(name: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with types converted as the constructor's hints say; ConfigError naming the option otherwise."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):  # hints that name what the module does not import: check nothing
        return dict(options)
    checked = {}
    for key, value in options.items():
        hint = hints.get(key)
        if hint is not None and hint is not Any:
            value = _converted(name, key, hint, value)
        _check_range(name, key, value)
        checked[key] = value
    return checked


def _converted(name: str, key: str, hint: Any, value: Any) -> Any:
    adapter = TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ConfigError(f"encoder {name!r}: option {key!r} = {value!r}: {exc.errors()[0]['msg']}") from None


def _check_range(name: str, key: str, value: Any) -> None:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"encoder {name!r}: option {key!r} must be {expected}, got {value!r}")

    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if value < 0 or (value == 0 and key not in _MAY_BE_ZERO):
            raise bad(">= 0" if key in _MAY_BE_ZERO else ">= 1")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise bad("a finite number")
        if key in _PROBABILITIES and not 0 <= value < 1:
            raise bad("in [0, 1)")
        if key in _POSITIVE_FLOATS and value <= 0:
            raise bad("> 0")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if any(isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in value):
            raise bad("a list of sizes >= 1")
