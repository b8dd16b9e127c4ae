"""kd2m: reproducible companion to "KD2M: a unifying framework for feature knowledge distillation".

Layers, each knowing only those below it::

    kd2m.book           what only the book needs (``book`` extra: pandas, matplotlib, umap)
      .experiments        which runs each chapter needs, built from the profiles, run or loaded
      .plots              Table 1, Fig. 2 and Fig. 3 from run records
      .studies            the Metrics chapter's numerical studies on synthetic features
      .theory_book        the Theory chapter's tables and figures over kd2m.theory
    kd2m.bench          benchmarks (tooling): ``python -m kd2m.bench``
    kd2m.__main__       command line: ``python -m kd2m {train,column,sweep,list,metrics,profiles}``
    ---------- the library: no plotting, dataframe or notebook package is imported ----------
    kd2m.sweep          Table 1 of a profile as runs, trained through submitit (here or Slurm)
    kd2m.profiles       the two scales (cpu, paper) as plain values -> RunConfig
    kd2m.runs           config -> run record on disk (hashed, resumable, atomic writes)
    kd2m.stats          paired comparisons of Table 1's rows: over seeds (t) and test images
    kd2m.theory         Theorem 4.1 quantities on features, exact OT in float64
    kd2m.train          Algorithm 1: one loop for teacher, baseline and KD2M
    kd2m.models         encoder g + head h; forward returns (logits, features)
    kd2m.data           dataset or image folder -> uint8 tensor cache -> batches on the device
    kd2m.metrics        distances between feature batches D(z_S, z_T, y) and their registry

(``tests/test_layers.py`` fails when a library module imports matplotlib, pandas, umap or
papermill.)
"""

__version__ = "0.1.0"
