"""Every on-disk artefact: its schema, readers, writers and validation."""
