"""The node-kind table: how every kind of pytree node is read, keyed and rebuilt."""
