from django.apps import AppConfig


class ContainerManagerConfig(AppConfig):
    name = "container_manager"
    verbose_name = "Container jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .tasks import receivers

        receivers.connect()  # the Tasks framework's task_started / task_finished
