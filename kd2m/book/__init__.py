"""What only the book needs: chapter computations, tables and figures.

Its modules may import pandas, matplotlib and umap-learn (the ``book`` extra); the library
below (``kd2m.metrics``, ``data``, ``models``, ``train``, ``runs``, ``profiles``, ``theory``)
never imports this package.
"""
