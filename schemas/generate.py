"""Write the JSON Schema of every event type and of the config into schemas/json/.

python -m schemas.generate          rewrite the files
python -m schemas.generate --check  exit 1 if any file is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.alerts import Alert
from schemas.config import StrandlineConfig
from schemas.events import EVENT_TYPES, SCHEMA_VERSION, dataschema_urn

OUT = Path(__file__).parent / "json"


def rendered() -> dict[str, str]:
    files: dict[str, type[BaseModel]] = {
        f"{event_type}.v{SCHEMA_VERSION}.schema.json": model for event_type, model in EVENT_TYPES.items()
    }
    files["config.schema.json"] = StrandlineConfig
    # The body the generic alert webhook receives.
    files[f"alert.v{SCHEMA_VERSION}.schema.json"] = Alert
    out = {}
    for name, model in files.items():
        schema = model.model_json_schema(mode="serialization" if name != "config.schema.json" else "validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        event_type = name.removesuffix(f".v{SCHEMA_VERSION}.schema.json")
        if event_type in EVENT_TYPES:
            schema["$id"] = dataschema_urn(event_type)
        elif name.startswith("alert."):
            schema["$id"] = f"urn:strandline:schema:alert:{SCHEMA_VERSION}"
        else:
            schema["$id"] = "urn:strandline:schema:config"
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, text in rendered().items():
        path = OUT / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text)
    if check and stale:
        print("stale JSON Schemas: " + ", ".join(stale) + " (run `make schemas`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
