"""The compiled modules (schemas/_readers.pyx and _writers.pyx: why in their docstrings); everything
else is in pyproject.toml. They are optional: where no C compiler is, the install goes on without
them and schemas.serde reads and writes with the same code in Python (schemas.codecs)."""

from Cython.Build import cythonize
from setuptools import setup

extensions = cythonize(["schemas/_readers.pyx", "schemas/_writers.pyx"], quiet=True)
for extension in extensions:
    extension.optional = True  # cythonize does not carry an Extension's `optional` over
setup(ext_modules=extensions)
