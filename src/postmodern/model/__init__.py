"""Session splits, the LSTM recommender, baselines, training and the model bundle."""


class BundleError(ValueError):
    """A bundle directory is missing, incomplete or of an unknown format. (Here, not in bundle.py, so that the
    command line can catch it without importing torch.)"""
