"""registry: an OCI distribution client (pull, push, tag, copy, login).

Uses ``layerstore`` for the OCI types and the local blob store; never imports ``builder``.
"""
