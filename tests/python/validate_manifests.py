"""Validates manifest files against the published JSON Schema, as an editor or a CI linter
would: with `jsonschema` (the reference Python implementation, Draft 7) and PyYAML.

usage: validate_manifests.py SCHEMA_DIR FILE...
Each document is checked against its kind's schema (`pipeline.json`, `deployment.json`), or
against `manifest.json` (any kind) when its kind is none of them. Prints `FILE#N: ok` or `FILE#N: PATH: MESSAGE` for each document; exits 1 when any document
is invalid.
"""

import json
import os
import sys

import jsonschema
import yaml


def main() -> int:
    schema_dir, files = sys.argv[1], sys.argv[2:]
    validators = {}
    for schema_file in sorted(os.listdir(schema_dir)):
        with open(os.path.join(schema_dir, schema_file), encoding="utf-8") as f:
            schema = json.load(f)
        jsonschema.Draft7Validator.check_schema(schema)
        validators[schema_file] = jsonschema.Draft7Validator(schema)
    failed = False
    for name in files:
        with open(name, encoding="utf-8") as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        for i, document in enumerate(documents, start=1):
            where = f"{name}#{i}"
            kind = document.get("kind") if isinstance(document, dict) else None
            validator = validators.get(f"{str(kind).lower()}.json", validators["manifest.json"])
            errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
            if not errors:
                print(f"{where}: ok")
                continue
            failed = True
            for error in errors:
                # The deepest cause of an anyOf failure says most.
                causes = error.context or [error]
                best = max(causes, key=lambda e: len(e.absolute_path))
                path = ".".join(str(p) for p in best.absolute_path) or "."
                print(f"{where}: {path}: {best.message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
