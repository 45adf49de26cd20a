import os

from django.apps import AppConfig


class BenchAppConfig(AppConfig):
    name = "bench.benchapp"
    label = "benchapp"

    def ready(self) -> None:
        # A worker of `bench/run.py --only roundtrip --breakdown`: stamp each step.
        path = os.environ.get("BENCH_BREAKDOWN_WORKER")
        if path:
            from bench import breakdown

            breakdown.install(path)
