from django.apps import AppConfig


class PeersTasksDbConfig(AppConfig):
    name = "bench.peerapps.tasksdbapp"
    label = "peers_tasksdb"
