"""The ``purecompress demo`` job and its command line, kept apart from the library.

:func:`~purecompress.demo.recipes.run_demo` trains a small CNN on scikit-learn's digits, compresses
it with each built-in recipe and returns one row per recipe; :mod:`purecompress.demo.cli` is the
``purecompress`` command (also ``python -m purecompress``). Nothing in the library imports this
package.
"""
