"""JSON Schemas the structured-output tests generate against (each bounded so a small model
finishes well inside max_tokens)."""

NAME = {"type": "string", "minLength": 1, "maxLength": 20}

SCHEMAS = {
    "flat_person": {
        "type": "object",
        "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "nested_address": {
        "type": "object",
        "properties": {
            "name": NAME,
            "address": {
                "type": "object",
                "properties": {"city": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "array_bounds": {
        "type": "object",
        "properties": {"fruits": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 4}},
        "required": ["fruits"],
        "additionalProperties": False,
    },
    "enum_colour": {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    },
    "const_version": {
        "type": "object",
        "properties": {"version": {"const": 2}, "label": NAME},
        "required": ["version", "label"],
        "additionalProperties": False,
    },
    "any_of": {
        "type": "object",
        "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]}},
        "required": ["value"],
        "additionalProperties": False,
    },
    "refs_and_defs": {
        "type": "object",
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -10, "maximum": 10}, "y": {"type": "integer", "minimum": -10, "maximum": 10}}, "required": ["x", "y"], "additionalProperties": False}},
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"],
        "additionalProperties": False,
    },
    "number_bounds": {
        "type": "object",
        "properties": {"price": {"type": "number", "minimum": 0.5, "maximum": 99.5, "multipleOf": 0.01}},
        "required": ["price"],
        "additionalProperties": False,
    },
    "integer_exclusive": {
        "type": "object",
        "properties": {"count": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 20}},
        "required": ["count"],
        "additionalProperties": False,
    },
    "string_pattern": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}},
        "required": ["code"],
        "additionalProperties": False,
    },
    "string_formats": {
        "type": "object",
        "properties": {"day": {"type": "string", "format": "date"}, "id": {"type": "string", "format": "uuid"}},
        "required": ["day", "id"],
        "additionalProperties": False,
    },
    "email_format": {
        "type": "object",
        "properties": {"email": {"type": "string", "format": "email", "maxLength": 40}},
        "required": ["email"],
        "additionalProperties": False,
    },
    "optional_fields": {
        "type": "object",
        "properties": {"title": NAME, "subtitle": NAME, "pages": {"type": "integer", "minimum": 1, "maximum": 999}},
        "required": ["title"],
        "additionalProperties": False,
    },
    "array_of_objects": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {"type": "object", "properties": {"sku": NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["sku", "qty"], "additionalProperties": False},
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    },
    "boolean_and_null": {
        "type": "object",
        "properties": {"done": {"type": "boolean"}, "note": {"type": "null"}},
        "required": ["done", "note"],
        "additionalProperties": False,
    },
    "nullable_union": {
        "type": "object",
        "properties": {"nickname": {"type": ["string", "null"], "maxLength": 12}},
        "required": ["nickname"],
        "additionalProperties": False,
    },
    "top_level_array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100}, "minItems": 1, "maxItems": 5},
    "top_level_enum": {"enum": ["yes", "no", "maybe"]},
    "deep_nesting": {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {"c": {"type": "object", "properties": {"d": {"type": "integer", "minimum": 0, "maximum": 5}}, "required": ["d"], "additionalProperties": False}}, "required": ["c"], "additionalProperties": False}}, "required": ["b"], "additionalProperties": False}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "all_of": {
        "properties": {"id": {"type": "integer"}, "tag": {"type": "string"}},
        "additionalProperties": False,
        "allOf": [
            {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 1000}}, "required": ["id"]},
            {"type": "object", "properties": {"tag": {"enum": ["a", "b"]}}, "required": ["tag"]},
        ],
    },
    "one_of_shapes": {
        "type": "object",
        "properties": {
            "shape": {
                "oneOf": [
                    {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["kind", "r"], "additionalProperties": False},
                    {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["kind", "side"], "additionalProperties": False},
                ]
            }
        },
        "required": ["shape"],
        "additionalProperties": False,
    },
    "string_array_unique": {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 1, "maxItems": 3}},
        "required": ["tags"],
        "additionalProperties": False,
    },
}
