"""The only code that opens LMDB: environments, cube partitions, history and processed markers."""
