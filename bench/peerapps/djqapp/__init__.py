"""The side-by-side benchmark's django-jobqueue job (``bench/peers.py``)."""
