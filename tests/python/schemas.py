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

# More shapes for the corpus test (test_structured_corpus.py): numbers without bounds (where a
# tiny model used to write digits until max_tokens), exponents, arrays of numbers, optional
# and nested fields, and strings left unbounded.
NUMBER = {"type": "number"}
MORE_SCHEMAS = {
    "circle": {
        "type": "object",
        "properties": {"radius": NUMBER, "center": {"type": "object", "properties": {"x": NUMBER, "y": NUMBER}, "required": ["x", "y"], "additionalProperties": False}},
        "required": ["radius", "center"],
        "additionalProperties": False,
    },
    "point_3d": {
        "type": "object",
        "properties": {"x": NUMBER, "y": NUMBER, "z": NUMBER},
        "required": ["x", "y", "z"],
        "additionalProperties": False,
    },
    "measurements": {
        "type": "object",
        "properties": {"values": {"type": "array", "items": NUMBER, "minItems": 1, "maxItems": 5}, "unit": {"enum": ["cm", "kg", "s"]}},
        "required": ["values", "unit"],
        "additionalProperties": False,
    },
    "product": {
        "type": "object",
        "properties": {"name": NAME, "price": {"type": "number", "minimum": 0}, "quantity": {"type": "integer"}, "in_stock": {"type": "boolean"}},
        "required": ["name", "price", "quantity", "in_stock"],
        "additionalProperties": False,
    },
    "weather": {
        "type": "object",
        "properties": {
            "city": NAME,
            "temperature_c": NUMBER,
            "humidity": {"type": "integer", "minimum": 0, "maximum": 100},
            "wind_speed": {"type": "number", "exclusiveMinimum": 0},
        },
        "required": ["city", "temperature_c", "humidity", "wind_speed"],
        "additionalProperties": False,
    },
    "geo_location": {
        "type": "object",
        "properties": {"latitude": {"type": "number", "minimum": -90, "maximum": 90}, "longitude": {"type": "number", "minimum": -180, "maximum": 180}},
        "required": ["latitude", "longitude"],
        "additionalProperties": False,
    },
    "statistics": {
        "type": "object",
        "properties": {"mean": NUMBER, "median": NUMBER, "stddev": {"type": "number", "minimum": 0}, "count": {"type": "integer", "minimum": 0}},
        "required": ["mean", "median", "stddev", "count"],
        "additionalProperties": False,
    },
    "matrix": {
        "type": "object",
        "properties": {"rows": {"type": "array", "items": {"type": "array", "items": NUMBER, "minItems": 1, "maxItems": 3}, "minItems": 1, "maxItems": 3}},
        "required": ["rows"],
        "additionalProperties": False,
    },
    "invoice": {
        "type": "object",
        "properties": {
            "number": {"type": "integer"},
            "customer": {"type": "object", "properties": {"name": NAME, "email": {"type": "string", "maxLength": 40}}, "required": ["name"], "additionalProperties": False},
            "lines": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "object", "properties": {"item": NAME, "amount": NUMBER}, "required": ["item", "amount"], "additionalProperties": False}},
            "total": NUMBER,
        },
        "required": ["number", "customer", "lines", "total"],
        "additionalProperties": False,
    },
    "physics": {
        "type": "object",
        "properties": {"mass_kg": NUMBER, "velocity_m_s": NUMBER, "energy_j": NUMBER},
        "required": ["mass_kg", "velocity_m_s", "energy_j"],
        "additionalProperties": False,
    },
    "ratio": {
        "type": "object",
        "properties": {"ratio": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["ratio"],
        "additionalProperties": False,
    },
    "counter": {
        "type": "object",
        "properties": {"label": NAME, "count": {"type": "integer"}},
        "required": ["label", "count"],
        "additionalProperties": False,
    },
    "optional_numbers": {
        "type": "object",
        "properties": {"a": NUMBER, "b": NUMBER, "c": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "rgba_colour": {
        "type": "object",
        "properties": {
            "r": {"type": "integer", "minimum": 0, "maximum": 255},
            "g": {"type": "integer", "minimum": 0, "maximum": 255},
            "b": {"type": "integer", "minimum": 0, "maximum": 255},
            "alpha": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["r", "g", "b", "alpha"],
        "additionalProperties": False,
    },
    "server_config": {
        "type": "object",
        "properties": {
            "server": {"type": "object", "properties": {"host": NAME, "port": {"type": "integer", "minimum": 1, "maximum": 65535}, "timeout_s": NUMBER}, "required": ["host", "port", "timeout_s"], "additionalProperties": False},
            "debug": {"type": "boolean"},
            "tags": {"type": "array", "items": NAME, "maxItems": 3},
        },
        "required": ["server", "debug", "tags"],
        "additionalProperties": False,
    },
    "number_or_text": {
        "type": "object",
        "properties": {"value": {"anyOf": [NUMBER, {"type": "string", "maxLength": 10}]}},
        "required": ["value"],
        "additionalProperties": False,
    },
    "bare_number": NUMBER,
    "any_object": {"type": "object"},
    "free_text_note": {
        "type": "object",
        "properties": {"title": {"type": "string"}, "score": NUMBER},
        "required": ["title", "score"],
        "additionalProperties": False,
    },
}

CORPUS = {**SCHEMAS, **MORE_SCHEMAS}
