"""Coveo-format data: the generator, the file readers and loading into the raw log."""
