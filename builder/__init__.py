"""builder: the Dockerfile front end, build plan, executor and the ``pybuild`` CLI.

Import direction: ``builder`` → ``registry`` → ``layerstore``. Importing this package is
cheap on purpose (the CLI must start fast): submodules are imported where they are used.
"""

__version__ = "0.1.0"
