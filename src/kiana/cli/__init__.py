"""The ``kiana`` command line: a thin shell over ``kiana.node.Node``."""
