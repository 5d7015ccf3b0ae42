"""Files and flat dicts: the two formats, shards, recorded structure, rules (see README.md)."""
