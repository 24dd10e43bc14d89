"""The hostile input corpus: packages the exchange must refuse.

:mod:`tests.hostile.corpus` builds every case from data (one line per case)
and the agencies' real credentials; ``tests/integration/test_hostile_corpus.py``
runs the whole corpus through the real worker.
"""
