"""Human-readable descriptions of config fields, for `modelzip explain`."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def describe_fields(config_cls: type[BaseModel]) -> list[tuple[str, tuple[str, str, str, str]]]:
    """(name, (type, default, allowed, help)) for every field, from the JSON schema."""
    schema = config_cls.model_json_schema()
    defs = schema.get("$defs", {})
    rows = []
    for name, prop in schema.get("properties", {}).items():
        prop = _deref(prop, defs)
        required = name in schema.get("required", [])
        default = "(required)" if required else _show(prop.get("default", _factory_default(config_cls, name)))
        rows.append((name, (_type(prop, defs), default, _allowed(prop), prop.get("description", ""))))
    return rows


def _factory_default(config_cls: type[BaseModel], name: str) -> Any:
    """The value a ``default_factory`` makes (the JSON schema omits it; `null` would mislead)."""
    field = config_cls.model_fields.get(name)
    if field is None or field.default_factory is None:
        return None
    return field.get_default(call_default_factory=True)


def _deref(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    return {**defs[ref.split("/")[-1]], **{k: v for k, v in prop.items() if k != "$ref"}} if ref else prop


def _type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "enum" in prop:
        return "choice"
    if "anyOf" in prop:
        return " | ".join(_type(_deref(p, defs), defs) for p in prop["anyOf"])
    kind = prop.get("type", "object")
    if kind == "array" and "items" in prop:
        return f"list[{_type(_deref(prop['items'], defs), defs)}]"
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}.get(
        kind, kind)


def _allowed(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(map(str, prop["enum"]))
    bounds = []
    for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                        ("exclusiveMaximum", "<")):
        if key in prop:
            bounds.append(f"{symbol} {prop[key]}")
    for option in prop.get("anyOf", []):
        text = _allowed(option)
        if text:
            bounds.append(text)
    return ", ".join(bounds)


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
