"""Metrics, the evaluation protocol and the Metaflow card builders."""
