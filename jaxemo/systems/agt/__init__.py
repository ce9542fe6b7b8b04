"""AGT for MER2024 MER-SEMI (Shi & Gao, MRAC 2024): the models are `jaxemo/models/agt.py`; here, by stage:

    data       the labelled set and the unlabelled pool as host arrays (`MerSet`), folds, class priors
    task       the six-class cross-entropy task and the models' analytic FLOP counts
    cv         MERTools' recipe: folds x random hyperparameter draws as population groups, the best draw
    selftrain  confident pool samples as pseudo-labels, per-class (adaptive) thresholds, class quotas
    prior      Saerens-Latinne-Decaestecker EM for the class prior of the unlabelled pool, and the
               posterior reweighting from the training prior to a target prior (the "prior-knowledge" vote)
    semi       the whole pipeline (rounds, the vote, scores, submission, reports)
"""

from jaxemo.systems.agt import cv, data, prior, selftrain, semi, task

__all__ = ["cv", "data", "prior", "selftrain", "semi", "task"]
