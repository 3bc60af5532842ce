"""Vector index backends behind one ``VectorIndex`` protocol."""
