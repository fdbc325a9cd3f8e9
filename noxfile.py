"""The Django/Python matrix beside `make test` (Django 5.2 on Python 3.11).

    make test-matrix          every session below
    nox -s "django61-py313"   one of them

Each session installs the package with its test and docs extras (tests/unit/test_docs.py
imports Sphinx) into its own virtualenv, pins one Django, then runs the unit and integration
suites on SQLite and on PostgreSQL. The newest Django's deprecation warnings are errors.
Each session has PostgreSQL databases of its own (``<prefix>_<session>``, the prefix ``cm``
unless ``MATRIX_DB_PREFIX`` says otherwise; the demo settings name the test database
``test_<prefix>_<session>_<pid>``), so sessions and other test runs never share one. The
interpreters come from pyenv (``PYENV_ROOT``), the way CI's machines have them; browser
tests stay out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

#: (session name, Python version as pyenv names it, Django requirement)
MATRIX = [
    ("django61-py313", "3.13.0", "Django>=6.1,<6.2"),
    ("django60-py312", "3.12.1", "Django>=6.0,<6.1"),
]
#: The newest Django of the matrix warns with this class; each session makes it an error
#: when its Django has it (5.2 says RemovedInDjango61/70Warning, 6.x RemovedInDjango70Warning).
DEPRECATIONS = ("RemovedInDjango70Warning", "RemovedInDjango71Warning")
SUITES = ["tests/unit", "tests/integration"]
PG = os.environ.get("PG_SERVER", "postgres://postgres@127.0.0.1:5432")
DB_PREFIX = os.environ.get("MATRIX_DB_PREFIX", "cm")


def _pyenv_python(version: str) -> str:
    """The interpreter pyenv installed for ``version`` (e.g. .../3.13.0/bin/python3.13)."""
    minor = ".".join(version.split(".")[:2])
    prefix = None
    if shutil.which("pyenv"):
        prefix = subprocess.run(
            ["pyenv", "prefix", version], capture_output=True, text=True, check=False
        ).stdout.strip()
    root = Path(
        prefix or Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions" / version
    )
    path = root / "bin" / f"python{minor}"
    if not path.exists():
        raise RuntimeError(f"no Python {version} at {path} (pyenv install {version})")
    return str(path)


def _warning_flags(session: nox.Session) -> list[str]:
    """``-W error::<class>`` for each deprecation class this session's Django defines."""
    code = (
        "import django.utils.deprecation as d; "
        f"print(' '.join(n for n in {DEPRECATIONS!r} if hasattr(d, n)))"
    )
    names = session.run("python", "-c", code, silent=True) or ""
    flags = []
    for name in str(names).split():
        flags += ["-W", f"error::django.utils.deprecation.{name}"]
    if not flags:
        session.error(f"this Django defines none of {DEPRECATIONS}: update DEPRECATIONS")
    return flags


def _run_suites(session: nox.Session, db_env: dict[str, str], label: str) -> bool:
    """Whether the suites passed on this database (the next database runs either way)."""
    session.log(f"pytest {' '.join(SUITES)} on {label}")
    try:
        session.run(
            "python", "-m", "pytest", "-p", "no:cacheprovider", *_warning_flags(session),
            *SUITES, *session.posargs, env=db_env,
        )  # fmt: skip
    except CommandFailed:
        return False
    return True


def _matrix_session(name: str, python: str, django: str) -> None:
    @nox.session(name=name, python=_pyenv_python(python))
    def run(session: nox.Session) -> None:
        session.install("-e", ".[test,postgres,docs]", django)
        session.run(
            "python",
            "-c",
            "import django, sys; print('Django', django.__version__, sys.version.split()[0])",
        )
        db = f"{DB_PREFIX}_{name.replace('-', '_')}"
        # SQLite: the demo settings name the test file after the pytest process (cm-test-<pid>).
        failed = [
            label
            for env, label in (
                ({"DATABASE_URL": ""}, "SQLite"),
                ({"DATABASE_URL": f"{PG}/{db}"}, f"PostgreSQL ({db})"),
            )
            if not _run_suites(session, env, label)
        ]
        if failed:
            session.error(f"the suites failed on {' and '.join(failed)}")


for _name, _python, _django in MATRIX:
    _matrix_session(_name, _python, _django)
