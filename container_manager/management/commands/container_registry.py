"""``manage.py container_registry``: the credentials jobs pull private images with.

    manage.py container_registry add NAME --registry HOST[:PORT] --username U \\
        --password-ref env:VAR|file:/path [--update]
    manage.py container_registry list
    manage.py container_registry remove NAME

The password is never given: ``--password-ref`` names where the worker reads it at launch
(``env:VARIABLE`` in its environment, or ``file:/path`` on its machine), so the database
only ever holds the reference. A job uses the credential it names, or else the one
registered for its image's registry.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, ProtectedError

from container_manager.environment import check_reference
from container_manager.exceptions import InvalidJobError
from container_manager.management.output import table_text
from container_manager.models import RegistryCredential

_FIELDS = {"registry": "registry", "username": "username", "password_ref": "password_reference"}


def _validation_message(err: ValidationError) -> str:
    return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in err.message_dict.items())


def _check_password_reference(reference: str | None) -> None:
    if reference is None:
        return
    try:
        check_reference(reference)
    except InvalidJobError:
        raise CommandError(  # never repeat what was given: it may be the password
            "--password-ref takes where the worker reads the password, env:VARIABLE or"
            " file:/path, never the password itself. Nothing was saved."
        ) from None


class Command(BaseCommand):
    help = "Register, list and remove the registry credentials private images are pulled with."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        add = actions.add_parser("add", help="Register a credential (or change one: --update).")
        add.add_argument("name", help="Unique name, e.g. 'ghcr'.")
        add.add_argument("--registry", metavar="HOST[:PORT]", help="e.g. registry.example.com.")
        add.add_argument("--username", metavar="USER")
        add.add_argument(
            "--password-ref",
            metavar="REFERENCE",
            help="Where the worker reads the password: env:VARIABLE or file:/path"
            " (never the password itself).",
        )
        add.add_argument(
            "--update",
            action="store_true",
            help="If the credential exists, change the options given instead of failing.",
        )
        actions.add_parser("list", help="The registered credentials (never a password).")
        remove = actions.add_parser("remove", help="Remove a credential no job uses.")
        remove.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _add(self, options: dict[str, Any]) -> None:
        _check_password_reference(options["password_ref"])
        credential, created = self._credential_to_write(options)
        for option, field in _FIELDS.items():
            if options[option] is not None:
                setattr(credential, field, options[option])
        try:
            credential.full_clean()
        except ValidationError as err:
            raise CommandError(f"Invalid credential: {_validation_message(err)}") from err
        credential.save()
        self.stdout.write(
            f"{'Registered' if created else 'Updated'} credential {credential.name!r}: "
            f"{credential.username}@{credential.registry}, password from "
            f"{credential.password_reference}"
        )

    @staticmethod
    def _credential_to_write(options: dict[str, Any]) -> tuple[RegistryCredential, bool]:
        """The row ``add`` writes (existing only with --update), and whether it is new."""
        credential = RegistryCredential.objects.filter(name=options["name"]).first()
        if credential is not None and not options["update"]:
            raise CommandError(
                f"Credential {credential.name!r} already exists; add --update to change it."
            )
        if credential is not None:
            return credential, False
        missing = [f"--{o.replace('_', '-')}" for o in _FIELDS if options[o] is None]
        if missing:
            raise CommandError(f"A new credential needs {', '.join(missing)}.")
        return RegistryCredential(name=options["name"]), True

    def _list(self, options: dict[str, Any]) -> None:
        credentials = RegistryCredential.objects.annotate(used=Count("jobs")).order_by("name")
        if not credentials:
            self.stdout.write("No registry credentials. Add one with: container_registry add")
            return
        rows = [("NAME", "REGISTRY", "USERNAME", "PASSWORD FROM", "JOBS")]
        rows += [
            (c.name, c.registry, c.username, c.password_reference, str(c.used)) for c in credentials
        ]
        for line in table_text(rows):
            self.stdout.write(line)

    def _remove(self, options: dict[str, Any]) -> None:
        credential = RegistryCredential.objects.filter(name=options["name"]).first()
        if credential is None:
            raise CommandError(f"Unknown credential {options['name']!r}.")
        try:
            credential.delete()
        except ProtectedError as err:
            jobs = credential.jobs.count()
            raise CommandError(
                f"Credential {credential.name!r} cannot be removed: {jobs} job(s) use it."
            ) from err
        self.stdout.write(f"Removed credential {credential.name!r}.")
