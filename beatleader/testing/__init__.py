"""Test tooling for beatleader (as ``kazoo.testing`` is for kazoo): not part of the product.

``localzk`` starts throwaway ZooKeeper servers and ensembles on loopback ports; ``localproc``
runs child processes in their own session with their output in a file; ``faketime`` gives
child processes one shifted, sped-up wall clock (libfaketime) to live through a DST change.
The demo, the benchmark, the native topology and the test suite use them from a checkout.
The wheel does not ship this subpackage (``[tool.setuptools] packages`` lists only
``beatleader``).
"""
