"""Pure numba kernels, one module per cheat-sheet section (see DESIGN.md section 3).

Kernels never validate, allocate policy or raise: ``fastgrad.functional`` and
the layers do that first and pass preallocated outputs in.
"""
