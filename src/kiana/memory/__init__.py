"""Turning files and text into knowledge blocks (chunking); retrieval comes later."""
