"""Protocol-buffer text format, as Triton's ``config.pbtxt`` is written: rendered from plain dicts.

A config is a dict whose values are scalars (numbers, booleans, strings), :class:`Enum` values
(printed bare: ``TYPE_FP32``, ``KIND_GPU``), nested dicts (messages) and lists (repeated fields;
a map field such as ``parameters`` is a list of ``{"key": ..., "value": {...}}`` messages).
"""

from __future__ import annotations

import json


class Enum(str):
    """An enum value: printed without quotes."""


def render(message: dict, indent: int = 0) -> str:
    """``message`` as protobuf text, one field per line, nested messages indented by two spaces."""
    return "".join(_field(key, value, indent) for key, value in message.items() if value is not None)


def _field(key: str, value, indent: int) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        return f"{pad}{key} {{\n{render(value, indent + 1)}{pad}}}\n"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            return "".join(_field(key, v, indent) for v in value)  # a repeated message: one block each
        return f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]\n"
    return f"{pad}{key}: {_scalar(value)}\n"


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # double quotes, backslash escapes: what text format reads
    raise TypeError(f"cannot render {type(value).__name__} {value!r} as protobuf text")
