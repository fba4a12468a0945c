"""The compiled modules (schemas/_readers.pyx and _writers.pyx: why in their docstrings); everything
else is in pyproject.toml. They are optional: where no C compiler is, the install goes on without
them and meterline.schemas.serde reads and writes with the same code in Python (schemas.codecs)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

# Named as installed (inside `meterline`, pyproject.toml), built from the folder they live in.
extensions = cythonize(
    [Extension(f"meterline.schemas.{name}", [f"schemas/{name}.pyx"]) for name in ("_readers", "_writers")],
    quiet=True,
)
for extension in extensions:
    extension.optional = True  # cythonize does not carry an Extension's `optional` over
setup(ext_modules=extensions)
