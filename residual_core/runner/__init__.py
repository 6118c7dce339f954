"""The runner, on top of everything: chapters executed with papermill, the book, dry runs, sweeps.

``chapters`` (where the chapters are, their parameters) ← ``presets`` (named parameter sets and
grids) ← ``records`` (results tables, completion records) ← ``execute`` (one papermill run) ←
``build`` (the HTML book), ``dryrun`` (what a run needs), ``sweep`` (grids, local or SLURM) ←
``cli`` (``python -m residual_core.runner``).
"""
