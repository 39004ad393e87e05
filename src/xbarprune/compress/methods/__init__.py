"""The registered compression methods, one module per method (or per family of methods).

Every module here is imported by :func:`xbarprune.compress.base.get_method` (found with
:mod:`pkgutil`, no list to edit); importing a module registers the
:class:`~xbarprune.compress.base.Method` subclasses it decorates with
:func:`~xbarprune.compress.base.register`. The parts the methods
are built from (regularisers, projections, clustering, purification, quantisation) are in
:mod:`xbarprune.compress.parts`. docs/adding_a_method.md walks through adding one.
"""
