"""Settings for worker processes that tests start: the demo settings, pointed at the test
database (CM_TEST_DB_NAME) with CM_TEST_SETTINGS (JSON) merged over the demo's
CONTAINER_MANAGER."""

import json
import os

from demo.settings import *  # noqa: F403
from demo.settings import CONTAINER_MANAGER as DEMO_CONTAINER_MANAGER
from demo.settings import DATABASES

if os.environ.get("CM_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["CM_TEST_DB_NAME"]
CONTAINER_MANAGER = {
    **DEMO_CONTAINER_MANAGER,
    **json.loads(os.environ.get("CM_TEST_SETTINGS", "{}")),
}
