"""URLs of container_manager outside the admin: ``path("", include("container_manager.urls"))``
serves the Prometheus endpoint at ``/metrics``."""

from __future__ import annotations

from django.urls import URLPattern, path

from .metrics import metrics_view

app_name = "container_manager"

urlpatterns: list[URLPattern] = [path("metrics", metrics_view, name="metrics")]
