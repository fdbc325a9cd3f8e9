"""The executor-neutral spec: mount, user, capability and entrypoint parsing, the image's
registry, what a spec requests, and what an attempt records (never a secret value)."""

from __future__ import annotations

import pytest

from container_manager.exceptions import InvalidJobError
from container_manager.spec import (
    JobSpec,
    Mount,
    RegistryAuth,
    image_registry,
    parse_capabilities,
    parse_entrypoint,
    parse_mounts,
    parse_user,
)


class TestMounts:
    @pytest.mark.parametrize(
        ("text", "mount"),
        [
            ("volume:data:/data", Mount("volume", "/data", "data")),
            ("volume:data:/data:ro", Mount("volume", "/data", "data", read_only=True)),
            ("bind:/srv/in:/in", Mount("bind", "/in", "/srv/in", read_only=True)),
            ("bind:/srv/out:/out:rw", Mount("bind", "/out", "/srv/out", read_only=False)),
            ("tmpfs:/scratch:64", Mount("tmpfs", "/scratch", size_mb=64)),
        ],
    )
    def test_string_forms(self, text, mount):
        assert Mount.parse(text) == mount

    def test_dict_form_and_bind_read_only_default(self):
        assert Mount.parse({"type": "bind", "source": "/srv", "target": "/in"}).read_only
        mount = Mount.parse({"type": "bind", "source": "/srv", "target": "/in", "read_only": False})
        assert not mount.read_only
        assert Mount.parse({"type": "volume", "source": "v", "target": "/v"}).read_only is False

    @pytest.mark.parametrize(
        ("value", "words"),
        [
            ("volume:data:relative", "absolute path other than /"),
            ("volume:data:/", "absolute path other than /"),
            ("volume:data:/a/../b", "'..'"),
            ("volume:bad/name:/data", "volume name"),
            ("bind:relative:/in", "absolute host path"),
            ("bind:/srv/../etc:/in", "absolute host path"),
            ("tmpfs:/scratch", "tmpfs:/target:SIZE_MB"),
            ("tmpfs:/scratch:0", "size of 1 to"),
            ("nfs:server:/x", "volume, bind or tmpfs"),
            ("bind:/a:/b:rx", "[:ro|:rw]"),
            ({"type": "tmpfs", "target": "/t"}, "needs a size"),
            ({"type": "volume", "source": "v", "target": "/v", "size_mb": 5}, "only a tmpfs"),
            ({"type": "volume", "source": "v", "target": "/v", "mode": "x"}, "unknown mount keys"),
            ({"type": "bind", "source": "/s", "target": "/t", "read_only": "yes"}, "true or false"),
            (42, "a mapping or"),
        ],
    )
    def test_refusals_say_what_is_wrong(self, value, words):
        with pytest.raises(InvalidJobError, match=None) as caught:
            Mount.parse(value)
        assert words in str(caught.value)

    def test_targets_are_unique_and_the_list_is_a_list(self):
        with pytest.raises(InvalidJobError, match="same target"):
            parse_mounts(["volume:a:/data", "tmpfs:/data/:8"])
        with pytest.raises(InvalidJobError, match="must be a list"):
            parse_mounts("volume:a:/data")  # type: ignore[arg-type]
        assert parse_mounts(None) == []

    def test_as_dict_round_trips(self):
        mount = Mount.parse("tmpfs:/scratch:16")
        assert mount.as_dict() == {"type": "tmpfs", "target": "/scratch", "read_only": False,
                                   "size_mb": 16}  # fmt: skip
        assert Mount.parse(mount.as_dict()) == mount


class TestUserEntrypointCapabilities:
    def test_users_are_numeric(self):
        assert parse_user("") is None
        assert parse_user("1000") == (1000, None)
        assert parse_user("1000:2000") == (1000, 2000)
        for bad in ("root", "1000:staff", "-1", "1000:", "1\n", "99999999999"):
            with pytest.raises(InvalidJobError):
                parse_user(bad)

    def test_entrypoint(self):
        assert parse_entrypoint(None) == []
        assert parse_entrypoint(["/bin/sh", "-c"]) == ["/bin/sh", "-c"]
        for bad in ("sh -c", ["sh", ""], ["a\0b"], [1]):
            with pytest.raises(InvalidJobError):
                parse_entrypoint(bad)

    def test_capabilities_are_normalised(self):
        assert parse_capabilities(["cap_net_admin", "SYS_TIME", "NET_ADMIN"]) == [
            "NET_ADMIN",
            "SYS_TIME",
        ]
        for bad in ("NET_ADMIN", ["net admin"], ["X" * 40], [None]):
            with pytest.raises(InvalidJobError):
                parse_capabilities(bad)


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", "docker.io"),
        ("library/busybox:1", "docker.io"),
        ("ghcr.io/org/app:1", "ghcr.io"),
        ("127.0.0.1:5555/cm/busybox:t", "127.0.0.1:5555"),
        ("localhost/app", "localhost"),
    ],
)
def test_image_registry(image, registry):
    assert image_registry(image) == registry


class TestSpec:
    def test_requested_lists_only_what_is_set(self):
        assert JobSpec("j", 1, "img", memory_limit_mb=64).requested() == set()
        spec = JobSpec(
            "j", 1, "img", user="1", mounts=(Mount("tmpfs", "/t", size_mb=1),), privileged=True,
            secret_references={"T": "env:T"}, registry_credential="r.example.com",
        )  # fmt: skip
        assert spec.requested() == {
            "user",
            "mounts",
            "privileged",
            "secret_environment",
            "registry_credential",
        }

    def test_secrets_reach_the_environment_but_not_the_record(self):
        spec = JobSpec(
            "j",
            1,
            "img",
            environment={"A": "1"},
            secret_references={"TOKEN": "env:T"},
            registry_credential="r.io",
            registry_username="robot",
        ).with_secrets({"TOKEN": "s3cr3t-value"}, RegistryAuth("r.io", "robot", "pw-value"))
        assert spec.full_environment == {"A": "1", "TOKEN": "s3cr3t-value"}
        record = spec.describe()
        assert record["secret_environment"] == ["TOKEN"]
        assert record["environment"] == ["A"]
        assert record["registry_username"] == "robot"
        assert "s3cr3t-value" not in repr(record) and "pw-value" not in repr(record)
        assert "s3cr3t-value" not in repr(spec) and "pw-value" not in repr(spec)

    def test_auth_config(self):
        auth = RegistryAuth("127.0.0.1:5555", "robot", "pw")
        assert auth.as_auth_config() == {
            "username": "robot",
            "password": "pw",
            "serveraddress": "127.0.0.1:5555",
        }
