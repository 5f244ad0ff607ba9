"""The sans-I/O protocol core: bytes in, events and bytes out; nothing here awaits or reads a clock."""
