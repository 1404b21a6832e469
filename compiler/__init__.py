"""Admin and CI side of doorlock: load and validate access YAML, expand time rules, sign bundles."""
