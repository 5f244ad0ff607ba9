"""The sans-I/O protocol core: bytes in, events and bytes out. Nothing here awaits or reads a clock."""
