from django.apps import AppConfig


class PeersJobqueueConfig(AppConfig):
    name = "bench.peerapps.djqapp"
    label = "peers_djq"
