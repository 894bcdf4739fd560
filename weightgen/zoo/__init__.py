"""Model zoos: batched training of many small networks, and their on-disk store."""
