"""Build the optional compiled market core (``tickwire._market``).

Everything else is in pyproject.toml. ``optional=True``: on a machine without a C
compiler the build goes on without it and tickwire runs the pure-Python market
(``tickwire.simulator``), which produces the same messages, only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tickwire._market",
            ["src/tickwire/_market.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
