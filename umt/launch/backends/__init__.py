"""The job backends: every module here is one, registered by name when it is imported.

:func:`umt.launch.backend.discover` imports each module of this package, and each
:class:`umt.launch.backend.Backend` subclass with a ``name`` registers itself. A new backend is
one module here, its CRD in ``umt/launch/crds/`` and its rule in ``manifests/base/role.yaml``.
"""
