"""The sans-I/O protocol core: bytes in, events and bytes out.

Nothing here awaits, sleeps or reads a clock.
"""
