"""Session splits, the LSTM recommender, baselines, training and the model bundle."""
