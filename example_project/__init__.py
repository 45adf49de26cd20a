"""The example project: a small shop that uses django-jobqueue for each common pattern."""
