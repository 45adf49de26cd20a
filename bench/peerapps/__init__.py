"""The side-by-side benchmark's queues (``bench/peers.py``): one module per queue.

Each module runs in a driver process (``python -m bench.peerapps.driver NAME``) started by
``bench/peers.py``, each with the interpreter of ``.venv-peers`` (the peers are not
dependencies of this project; django-jobqueue comes from the checkout, on ``PYTHONPATH``).
Every module only uses its queue's public API and its default worker command.
"""
