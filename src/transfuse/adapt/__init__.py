"""Adaptation strategies (probe, fine-tune, LP-FT, raw estimator) behind one protocol, and the one
cross-fit loop that scores every candidate: each fold's model sees only that fold's training rows,
and whatever it selects (epochs, hyperparameters) is selected inside them."""
