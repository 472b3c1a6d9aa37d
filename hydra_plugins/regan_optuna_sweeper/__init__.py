"""lightning-regan's Hydra sweeper on Optuna's ask/tell, with trial pruning (``hydra/sweeper=regan_optuna``)."""
