"""The HTTP API: a thin FastAPI shell over ``kiana.node.Node`` (see ``create_app``)."""

from kiana.api.app import create_app

__all__ = ["create_app"]
