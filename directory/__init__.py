"""The professional directory: who may send and receive, and their published certificates."""
