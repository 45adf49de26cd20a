"""The side-by-side benchmark's django-tasks-db task (``bench/peers.py``)."""
