"""Multi-objective search over per-stage conv kinds: which stages should be depthwise-separable?

``dsconv-train -m +hparams_search=pareto hydra.sweeper.n_trials=N model=... dataset=...`` runs it through
the pinned ``hydra-optuna-sweeper`` (NSGA-II over validation accuracy and a cost). What the plugin does
not do is added around it, not by replacing it:

* ``space.suggest`` (the sweeper's ``custom_search_space``) suggests one conv kind per stage, the
  depthwise kernel, depth multiplier and width, and turns them into ordinary overrides;
* ``setup.SearchSetup`` (a Hydra callback) makes a relaunch of the same command resume its SQLite study:
  it marks trials a killed process left RUNNING as failed and runs only the trials still missing;
* ``front`` reads a search back (``load_trials``, ``front``) and ``rerun`` re-trains the front with
  several seeds (``python -m dsconv.search.rerun SWEEP_DIR --seeds 0 1 2``).

This package is imported by Hydra before any training, so its modules import torch only where needed.
"""
