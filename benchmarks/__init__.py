"""Performance benchmarks, each a module that prints its figures and writes a page in docs/.

``python -m benchmarks.squeeze_scoring`` (``make bench``) writes ``docs/benchmarks.md``.
They measure and report; they assert nothing, and are not part of the test suite.
"""
