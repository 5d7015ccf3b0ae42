"""The class machinery: kinds, fields, class metadata, instances, `@treeclass` (see README.md)."""
