"""KI_ana: a personal AI that lives on its owner's devices.

The package is a library first; the CLI (``kiana.cli``) and the HTTP API
(``kiana.api``) are thin shells over it. Importing any module has no side
effects: nothing is opened, read or started until a function is called.
"""

__version__ = "0.1.0"
