"""kd2m: reproducible companion to "KD2M: a unifying framework for feature knowledge distillation".

Layers (each knows only those below it)::

    kd2m.plots / kd2m.studies   figures and tables from run records
    kd2m.theory                 Theorem 4.1 quantities on features
    kd2m.runs                   config -> run record on disk (hashed, resumable, atomic)
    kd2m.train                  Algorithm 1: one loop for teacher, baseline and KD2M
    kd2m.models                 encoder g + head h; forward returns (logits, features)
    kd2m.data                   dataset -> uint8 tensor cache -> augmented batches on device
    kd2m.metrics                distances between feature batches D(z_S, z_T, y)
"""

__version__ = "0.1.0"
