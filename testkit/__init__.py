"""What the tests and the benchmarks share: brokers, the Hub server, streams, factories.

A support package of the checkout, never shipped in the wheel (pyproject's
`[tool.setuptools.packages.find]` leaves it out). Plain functions and context managers
only: the pytest fixtures that bind them live in `tests/conftest.py` and the
`conftest.py` of the test folder that needs them, so `bench/` imports this package
without pytest's machinery.
"""
