"""Method settings from the command line (`--method-option METHOD.KEY=VALUE`): CLI strings typed one way
for every method, whether it reads one option with a default or a whole settings dataclass."""

from __future__ import annotations

import dataclasses

from rlprompt.errors import UserError

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")
_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def convert(key: str, value, kind: type, nullable: bool = False):
    """`value` (a CLI string, or already typed) as `kind`: "true"/"false"/"1"/"0"/"yes"/"no" for bool,
    None or "none" where `nullable`. A one-line UserError names the option otherwise."""
    try:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if not nullable:
                raise ValueError(value)
            return None
        if kind is bool and isinstance(value, str):
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(value)
            return value.lower() in _TRUE
        return value if isinstance(value, kind) else kind(value)
    except (TypeError, ValueError):
        raise UserError(f"option {key}={value!r}: expected a value of type {kind.__name__}") from None


def option(ctx, name: str, default):
    """ctx.options[name] typed like `default` (CLI options arrive as strings); `default` when absent."""
    value = ctx.options.get(name, default)
    if value is None or default is None or isinstance(value, type(default)):
        return value
    return convert(name, value, type(default))


def options_into(cfg, options: dict, method: str):
    """Copy of dataclass `cfg` with the fields named in `options` replaced, strings converted to the
    field's type. `METHOD.FIELD` (e.g. `prefix-tuning.lr`) wins over a plain `FIELD`, which applies
    to every method that has that field; other keys are left alone. A UserError on a bad value."""
    changes = {}
    for f in dataclasses.fields(cfg):
        key = f"{method}.{f.name}" if f"{method}.{f.name}" in options else f.name
        if key not in options:
            continue
        type_name = str(f.type).split("|")[0].strip()  # "int | None" -> "int"
        changes[f.name] = convert(key, options[key], _KINDS.get(type_name, str), "None" in str(f.type))
    return dataclasses.replace(cfg, **changes)
