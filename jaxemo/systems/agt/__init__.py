"""AGT for MER2024 MER-SEMI (Shi & Gao, MRAC 2024): the models are `jaxemo/models/agt.py`; here, by stage:

    prior    Saerens-Latinne-Decaestecker EM for the class prior of the unlabelled pool, and the
             posterior reweighting from the training prior to a target prior (the "prior-knowledge" vote)
"""

from jaxemo.systems.agt import prior

__all__ = ["prior"]
