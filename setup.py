"""The one compiled module (schemas/_readers.pyx: why in its docstring); everything else is in
pyproject.toml. It is optional: where no C compiler is, the install goes on without it and
schemas.serde reads events with the same reader in Python (schemas.codecs.read_events)."""

from Cython.Build import cythonize
from setuptools import setup

extensions = cythonize(["schemas/_readers.pyx"], quiet=True)
for extension in extensions:
    extension.optional = True  # cythonize does not carry an Extension's `optional` over
setup(ext_modules=extensions)
