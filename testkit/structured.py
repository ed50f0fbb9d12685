"""A JSON schema the tiny model's answers can satisfy, shared by the structured-output tests."""

CAPITALS = {"Spain": "Madrid", "Kenya": "Nairobi", "Peru": "Lima", "Japan": "Tokyo"}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": sorted(CAPITALS.values())}},
    "required": ["city"],
    "additionalProperties": False,
}
CITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "capital", "schema": CITY_SCHEMA}}
