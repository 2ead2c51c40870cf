"""Adapters from :class:`loraguard_cpp.batch.GuardScorer` to data engines; each imports its engine lazily.

- :mod:`loraguard_cpp.integrations.ray`: Ray Data (``pip install 'loraguard[ray]'``)
- :mod:`loraguard_cpp.integrations.spark`: Spark's ``predict_batch_udf`` (``pip install 'loraguard[spark]'``)
"""
