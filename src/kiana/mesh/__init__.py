"""The mesh: pairing, discovery, authenticated links and end-to-end messages.

See docs/mesh.md. Protocol cores are sans-I/O; ``service.py`` is the asyncio shell.
"""
