"""The guest-side appliers, each under a temporary root (nothing real is touched)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from xen_channel_backend.guest import appliers
from xen_channel_backend.guest.appliers import (
    APPLIED,
    FAILED,
    UNCHANGED,
    UNSUPPORTED,
    ApplyContext,
    Item,
    ItemResult,
    Problem,
    RootFS,
    default_registry,
    guest_key_problem,
)

RUNNING_AS_ROOT = os.geteuid() == 0
BOB_UID, BOB_GID = 4242, 4343


class RecordingHostname:
    """Stands in for the kernel hostname (sethostname(2)), which tests must not change."""

    def __init__(self, current: str) -> None:
        self.current = current
        self.calls: list[str] = []

    def get(self) -> str:
        return self.current

    def set(self, name: str) -> None:
        self.calls.append(name)
        self.current = name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small guest tree: /etc/passwd with root and bob, and bob's home."""
    guest = tmp_path / "guest"
    (guest / "etc").mkdir(parents=True)
    (guest / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "# a comment line\n"
        f"bob:x:{BOB_UID}:{BOB_GID}:Bob:/home/bob:/bin/sh\n"
        "nohome:x:5000:5000::relative/home:/bin/sh\n"
    )
    (guest / "home/bob").mkdir(parents=True)
    (guest / "root").mkdir()
    return guest


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root that no applier may ever write into."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def ctx(root: Path, **kwargs: object) -> ApplyContext:
    return ApplyContext(root=str(root), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def real_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Public key lines made by the real ssh-keygen (openssh-client)."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (Debian package openssh-client) is not installed")
    directory = tmp_path_factory.mktemp("keys")
    keys = {}
    for kind, extra in (("ed25519", []), ("ecdsa", ["-b", "256"]), ("rsa", ["-b", "1024"])):
        path = directory / kind
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", f"{kind}@test", "-f", path],
            check=True,
        )
        keys[kind] = (directory / f"{kind}.pub").read_text().strip()
    return keys


# --- hostname ---------------------------------------------------------------


def test_hostname_written_atomically_with_mode(root: Path) -> None:
    outcome = default_registry().apply({"hostname": "vm1.example.org"}, ctx(root))
    assert outcome.status == "ok"
    assert outcome.results == [ItemResult("hostname", APPLIED, "hostname set to vm1.example.org")]
    path = root / "etc/hostname"
    assert path.read_text() == "vm1.example.org\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert tree(root / "etc") == ["hostname", "passwd"]  # no temporary file left behind


def test_hostname_reapply_is_unchanged(root: Path) -> None:
    registry = default_registry()
    registry.apply({"hostname": "vm1"}, ctx(root))
    before = (root / "etc/hostname").stat().st_ino
    outcome = registry.apply({"hostname": "vm1"}, ctx(root))
    assert [r.status for r in outcome.results] == [UNCHANGED]
    assert (root / "etc/hostname").stat().st_ino == before  # not even rewritten


def test_hostname_sets_live_name_only_when_asked(root: Path) -> None:
    live = RecordingHostname("localhost")
    registry = default_registry()
    assert registry.apply({"hostname": "vm1"}, ctx(root, live_hostname=live)).status == "ok"
    assert live.calls == ["vm1"]
    # File and live name both current: unchanged, no second sethostname.
    outcome = registry.apply({"hostname": "vm1"}, ctx(root, live_hostname=live))
    assert [r.status for r in outcome.results] == [UNCHANGED]
    assert live.calls == ["vm1"]
    # Someone changed the live name behind our back: set it again.
    live.current = "other"
    outcome = registry.apply({"hostname": "vm1"}, ctx(root, live_hostname=live))
    assert [r.status for r in outcome.results] == [APPLIED]
    assert live.calls == ["vm1", "vm1"]


def test_live_actions_only_for_the_real_root(tmp_path: Path) -> None:
    assert ApplyContext.for_root(str(tmp_path)).live_hostname is None
    assert ApplyContext.for_root(str(tmp_path)).reload_network is None
    real = ApplyContext.for_root("/")
    assert isinstance(real.live_hostname, appliers.SystemHostname)
    assert real.reload_network is appliers.reload_networkd


@pytest.mark.parametrize(
    "name",
    ["", "-vm", "vm-", "vm_1", "a..b", "vm 1", "vm\n1", "x" * 65, "é", 7, None, ["vm"]],
)
def test_bad_hostnames_rejected(root: Path, name: object) -> None:
    outcome = default_registry().apply({"hostname": name}, ctx(root))
    assert outcome.status == "error"
    assert [r.item for r in outcome.results] == ["hostname"]
    assert outcome.results[0].status == FAILED
    assert not (root / "etc/hostname").exists()


# --- ssh authorized_keys ----------------------------------------------------


def test_ssh_keys_content_modes_and_owner(root: Path, real_keys: dict[str, str]) -> None:
    keys = [real_keys["ed25519"], real_keys["rsa"]]
    outcome = default_registry().apply({"ssh_keys": [{"user": "bob", "keys": keys}]}, ctx(root))
    assert outcome.status == "ok", outcome
    assert [(r.item, r.status) for r in outcome.results] == [("ssh_keys/bob", APPLIED)]
    ssh = root / "home/bob/.ssh"
    path = ssh / "authorized_keys"
    assert path.read_text() == appliers.MANAGED_HEADER + "".join(f"{k}\n" for k in keys)
    assert stat.S_IMODE(ssh.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if RUNNING_AS_ROOT:
        for p in (ssh, path):
            assert (p.stat().st_uid, p.stat().st_gid) == (BOB_UID, BOB_GID)
    assert tree(ssh) == ["authorized_keys"]
    # The real OpenSSH tool reads the file back: every line is a key it accepts.
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", path], check=True, capture_output=True, text=True
    ).stdout
    assert len(listed.splitlines()) == 2


@pytest.mark.skipif(not RUNNING_AS_ROOT, reason="chown to another uid needs root")
def test_ssh_keys_fix_wrong_owner_and_mode(root: Path, real_keys: dict[str, str]) -> None:
    payload = {"ssh_keys": [{"user": "bob", "keys": [real_keys["ed25519"]]}]}
    registry = default_registry()
    registry.apply(payload, ctx(root))
    ssh = root / "home/bob/.ssh"
    os.chown(ssh / "authorized_keys", 0, 0)
    os.chmod(ssh, 0o777)
    outcome = registry.apply(payload, ctx(root))
    assert [r.status for r in outcome.results] == [APPLIED]
    assert stat.S_IMODE(ssh.stat().st_mode) == 0o700
    assert (ssh / "authorized_keys").stat().st_uid == BOB_UID


def test_ssh_keys_reapply_unchanged_and_replace(root: Path, real_keys: dict[str, str]) -> None:
    registry = default_registry()
    one = {"ssh_keys": [{"user": "bob", "keys": [real_keys["ed25519"]]}]}
    registry.apply(one, ctx(root))
    assert [r.status for r in registry.apply(one, ctx(root)).results] == [UNCHANGED]
    two = {"ssh_keys": [{"user": "bob", "keys": [real_keys["ecdsa"]]}]}
    assert [r.status for r in registry.apply(two, ctx(root)).results] == [APPLIED]
    text = (root / "home/bob/.ssh/authorized_keys").read_text()
    assert real_keys["ecdsa"] in text and real_keys["ed25519"] not in text


def test_ssh_keys_unknown_user_fails_that_item_only(root: Path, real_keys: dict[str, str]) -> None:
    payload = {
        "hostname": "vm1",
        "ssh_keys": [
            {"user": "mallory", "keys": [real_keys["ed25519"]]},
            {"user": "bob", "keys": [real_keys["ed25519"]]},
        ],
    }
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "partial"
    by_item = {r.item: r for r in outcome.results}
    assert by_item["ssh_keys/mallory"].status == FAILED
    assert "'mallory' not found in" in by_item["ssh_keys/mallory"].detail
    assert by_item["ssh_keys/bob"].status == APPLIED
    assert by_item["hostname"].status == APPLIED
    assert not (root / "home/mallory").exists()


def test_ssh_keys_missing_home_or_passwd(root: Path, real_keys: dict[str, str]) -> None:
    shutil.rmtree(root / "home/bob")
    payload = {"ssh_keys": [{"user": "bob", "keys": [real_keys["ed25519"]]}]}
    result = default_registry().apply(payload, ctx(root)).results[0]
    assert result.status == FAILED and "does not exist" in result.detail
    assert not (root / "home/bob").exists()  # homes are never created
    (root / "etc/passwd").unlink()
    result = default_registry().apply(payload, ctx(root)).results[0]
    assert result.status == FAILED and "passwd" in result.detail


def test_ssh_keys_relative_home_refused(root: Path, real_keys: dict[str, str]) -> None:
    payload = {"ssh_keys": [{"user": "nohome", "keys": [real_keys["ed25519"]]}]}
    result = default_registry().apply(payload, ctx(root)).results[0]
    assert result.status == FAILED and "home" in result.detail


def test_ssh_dir_symlink_out_of_root_refused(
    root: Path, outside: Path, real_keys: dict[str, str]
) -> None:
    # bob owns his home and could point ~/.ssh anywhere, e.g. at /etc.
    (root / "home/bob/.ssh").symlink_to(outside)
    payload = {"ssh_keys": [{"user": "bob", "keys": [real_keys["ed25519"]]}]}
    result = default_registry().apply(payload, ctx(root)).results[0]
    assert result.status == FAILED and "symlink" in result.detail
    assert tree(outside) == []


def test_authorized_keys_symlink_is_replaced_not_followed(
    root: Path, outside: Path, real_keys: dict[str, str]
) -> None:
    (root / "home/bob/.ssh").mkdir()
    target = outside / "victim"
    target.write_text("precious\n")
    (root / "home/bob/.ssh/authorized_keys").symlink_to(target)
    payload = {"ssh_keys": [{"user": "bob", "keys": [real_keys["ed25519"]]}]}
    assert default_registry().apply(payload, ctx(root)).status == "ok"
    assert target.read_text() == "precious\n"
    path = root / "home/bob/.ssh/authorized_keys"
    assert not path.is_symlink() and real_keys["ed25519"] in path.read_text()


def test_home_symlinks_resolve_inside_the_root(
    root: Path, outside: Path, real_keys: dict[str, str]
) -> None:
    """An absolute symlink means the guest's /, i.e. the root, never the host's /."""
    shutil.rmtree(root / "home")
    (root / "var/home/bob").mkdir(parents=True)
    (root / "home").symlink_to("/var/home")  # like Fedora Silverblue
    # An escape attempt with '..' only reaches the root, like chroot.
    (root / "var/home/bob/up").symlink_to("../" * 12)
    (root / "var/home/bob/out").symlink_to("../" * 12 + str(outside).lstrip("/"))
    payload = {"ssh_keys": [{"user": "bob", "keys": [real_keys["ed25519"]]}]}
    assert default_registry().apply(payload, ctx(root)).status == "ok"
    assert (root / "var/home/bob/.ssh/authorized_keys").is_file()
    assert tree(outside) == []
    fs = RootFS(str(root))
    with fs.directory("/home/bob/up") as fd:  # '..' clamps at the root
        assert os.fstat(fd).st_ino == root.stat().st_ino
    with pytest.raises(FileNotFoundError):  # <root>/<outside>, which does not exist
        fs.open_directory("/home/bob/out")
    with fs.directory("/home/bob/out", create_mode=0o755):
        pass
    assert (root / str(outside).lstrip("/")).is_dir()
    assert tree(outside) == []


def _key_blob_line(key_type: str, blob_type: str) -> str:
    import base64
    import struct

    name = blob_type.encode()
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", 32) + b"k" * 32
    return f"{key_type} {base64.b64encode(blob).decode()} c"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{ed}\nssh-ed25519 AAAA evil", "control character"),
        ("{ed}\rx", "control character"),
        ("{ed}\x00", "control character"),
        ("ssh-ed25519", "is not one line 'TYPE BASE64 [COMMENT]'"),
        ("x" * 16385, "over the 16384 allowed"),
    ],
)
def test_malformed_key_lines_reject_the_payload(
    root: Path, real_keys: dict[str, str], line: str, why: str
) -> None:
    """A newline would smuggle a second line into authorized_keys: malformed."""
    line = line.replace("{ed}", real_keys["ed25519"])
    assert why in (guest_key_problem(line) or "")
    payload = {"hostname": "vm1", "ssh_keys": [{"user": "bob", "keys": [line]}]}
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "error"
    assert outcome.results == [
        ItemResult("ssh_keys/bob", FAILED, f"key 0: {guest_key_problem(line)}")
    ]
    assert outcome.error is not None and outcome.error.startswith("payload rejected, nothing")
    assert not (root / "etc/hostname").exists()  # nothing half-applied
    assert not (root / "home/bob/.ssh").exists()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('command="/bin/sh" {ed}', "options are not allowed"),
        ("no-pty {ed}", "options are not allowed"),
        ('from="*" {ed}', "options are not allowed"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "options are not allowed"),
        ("ssh-ed25519 not*base64", "is not base64"),
        (_key_blob_line("ssh-ed25519", "ssh-rsa"), "is not a ssh-ed25519 key"),
        ("ssh-ed25519 AAAA", "is too short"),
        ("ssh-ed25519 AAAAAAAA", "is not a ssh-ed25519 key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "options are not allowed"),
    ],
)
def test_refused_key_lines_fail_their_user(
    root: Path, real_keys: dict[str, str], line: str, why: str
) -> None:
    """Well-formed by the protocol, but not a plain public key: that user's item
    fails and none of its keys are written, while other items apply."""
    line = line.replace("{ed}", real_keys["ed25519"])
    assert why in (guest_key_problem(line) or "")
    keys = [real_keys["rsa"], line]
    payload = {"hostname": "vm1", "ssh_keys": [{"user": "bob", "keys": keys}]}
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "partial"
    assert outcome.results[1] == ItemResult(
        "ssh_keys/bob", FAILED, f"key 1: {guest_key_problem(line)}"
    )
    assert outcome.results[0].status == APPLIED
    assert not (root / "home/bob/.ssh").exists()


def test_real_keys_and_comments_accepted(real_keys: dict[str, str]) -> None:
    for line in real_keys.values():
        assert guest_key_problem(line) is None
        assert guest_key_problem(line + " with  spaces in comment") is None


@pytest.mark.parametrize(
    "entry",
    [
        {"user": "../root", "keys": []},
        {"user": "Bob", "keys": []},
        {"user": "bob"},
        {"user": "bob", "keys": "ssh-ed25519 AAAA"},
        {"user": "bob", "keys": [], "options": "x"},
        "bob",
    ],
)
def test_bad_ssh_entries_rejected(root: Path, entry: object) -> None:
    outcome = default_registry().apply({"ssh_keys": [entry]}, ctx(root))
    assert outcome.status == "error"
    assert outcome.results and all(r.status == FAILED for r in outcome.results)


def test_duplicate_user_rejected(root: Path, real_keys: dict[str, str]) -> None:
    entry = {"user": "bob", "keys": [real_keys["ed25519"]]}
    outcome = default_registry().apply({"ssh_keys": [entry, entry]}, ctx(root))
    assert outcome.status == "error"
    assert outcome.results == [ItemResult("ssh_keys/bob", FAILED, "is listed more than once")]


# --- network addresses --------------------------------------------------------


def test_network_file_content(root: Path) -> None:
    reloads: list[None] = []
    payload = {
        "addresses": [
            {
                "interface": "eth0",
                "address": "192.0.2.10/24",
                "gateway": "192.0.2.1",
                "dns": ["192.0.2.53", "2001:db8::53"],
            },
            {"interface": "eth1", "address": "2001:DB8:0:0::10/64"},
        ]
    }
    context = ctx(root, reload_network=lambda: reloads.append(None))
    outcome = default_registry().apply(payload, context)
    assert outcome.status == "ok"
    assert [(r.item, r.status) for r in outcome.results] == [
        ("addresses/eth0", APPLIED),
        ("addresses/eth1", APPLIED),
    ]
    directory = root / "etc/systemd/network"
    eth0 = directory / "50-xen-channel-eth0.network"
    assert eth0.read_text() == (
        appliers.MANAGED_HEADER + "[Match]\nName=eth0\n\n[Network]\n"
        "Address=192.0.2.10/24\nGateway=192.0.2.1\nDNS=192.0.2.53\nDNS=2001:db8::53\n"
    )
    # Re-rendered by ipaddress: the host's spelling never reaches the file.
    assert "Address=2001:db8::10/64\n" in (directory / "50-xen-channel-eth1.network").read_text()
    assert stat.S_IMODE(eth0.stat().st_mode) == 0o644
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert tree(directory) == ["50-xen-channel-eth0.network", "50-xen-channel-eth1.network"]
    assert len(reloads) == 2
    again = default_registry().apply(payload, context)
    assert [r.status for r in again.results] == [UNCHANGED, UNCHANGED]
    assert len(reloads) == 2  # nothing changed, nothing reloaded


@pytest.mark.parametrize(
    ("entry", "item", "why"),
    [
        ({"interface": "../x", "address": "192.0.2.1/24"}, "addresses[0]", "not a valid Linux"),
        ({"interface": "eth0/..", "address": "192.0.2.1/24"}, "addresses[0]", "not a valid Linux"),
        ({"interface": "..", "address": "192.0.2.1/24"}, "addresses[0]", "not a valid Linux"),
        ({"interface": "e" * 16, "address": "192.0.2.1/24"}, "addresses[0]", "not a valid Linux"),
        ({"interface": "eth0\n", "address": "192.0.2.1/24"}, "addresses[0]", "not a valid Linux"),
        ({"interface": "eth 0", "address": "192.0.2.1/24"}, "addresses[0]", "not a valid Linux"),
        ({"interface": 0, "address": "192.0.2.1/24"}, "addresses[0]", "non-empty string"),
        ({"address": "192.0.2.1/24"}, "addresses[0]", "non-empty string"),
        ({"interface": "eth0", "address": "300.0.2.1/24"}, "addresses/eth0", "not an IP"),
        ({"interface": "eth0", "address": "192.0.2.1"}, "addresses/eth0", "ADDRESS/PREFIX"),
        ({"interface": "eth0", "address": "192.0.2.1/33"}, "addresses/eth0", "not an IP"),
        ({"interface": "eth0", "address": "192.0.2.1/24\nDNS=1.1.1.1"}, "addresses/eth0", "IP"),
        # ipaddress keeps a zone index verbatim: it would write the newline too.
        (
            {"interface": "eth0", "address": "fe80::1%eth0\nDNS=1.1.1.1/64"},
            "addresses/eth0",
            "not an IP address with a prefix",
        ),
        (
            {"interface": "eth0", "address": "192.0.2.1/24", "gateway": "2001:db8::1"},
            "addresses/eth0",
            "not the same IP version",
        ),
        (
            {"interface": "eth0", "address": "192.0.2.1/24", "gateway": "x"},
            "addresses/eth0",
            "gateway 'x' is not an IP address",
        ),
        (
            {"interface": "eth0", "address": "192.0.2.1/24", "dns": ["1.1.1.1", "dns.google"]},
            "addresses/eth0",
            "dns server 'dns.google'",
        ),
        (
            {"interface": "eth0", "address": "192.0.2.1/24", "dns": "1.1.1.1"},
            "addresses/eth0",
            "dns must be a list",
        ),
        (
            {"interface": "eth0", "address": "192.0.2.1/24", "mtu": 9000},
            "addresses/eth0",
            "unknown keys",
        ),
    ],
)
def test_bad_addresses_rejected(root: Path, entry: object, item: str, why: str) -> None:
    payload = {"hostname": "vm1", "addresses": [entry]}
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "error"
    assert [r.item for r in outcome.results] == [item]
    assert why in outcome.results[0].detail
    assert tree(root / "etc") == ["passwd"]  # not even the valid hostname


def test_duplicate_interface_rejected(root: Path) -> None:
    entry = {"interface": "eth0", "address": "192.0.2.1/24"}
    outcome = default_registry().apply({"addresses": [entry, entry]}, ctx(root))
    assert outcome.status == "error"
    assert outcome.results == [ItemResult("addresses/eth0", FAILED, "is listed more than once")]


def test_network_dir_symlink_stays_in_root(root: Path, outside: Path) -> None:
    (root / "etc/systemd").mkdir()
    (root / "etc/systemd/network").symlink_to(str(outside))  # absolute: the guest's own path
    payload = {"addresses": [{"interface": "eth0", "address": "192.0.2.1/24"}]}
    assert default_registry().apply(payload, ctx(root)).status == "ok"
    assert tree(outside) == []
    inside = root / str(outside).lstrip("/") / "50-xen-channel-eth0.network"
    assert inside.is_file()


def test_symlink_loop_fails_the_item(root: Path) -> None:
    (root / "etc/systemd").mkdir()
    (root / "etc/systemd/network").symlink_to("network")
    payload = {
        "hostname": "vm1",
        "addresses": [{"interface": "eth0", "address": "192.0.2.1/24"}],
    }
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "partial"
    assert [(r.item, r.status) for r in outcome.results] == [
        ("hostname", APPLIED),
        ("addresses/eth0", FAILED),
    ]
    assert "symlinks" in outcome.results[1].detail


def test_io_error_fails_only_that_item(root: Path) -> None:
    (root / "etc/systemd").write_text("not a directory\n")
    payload = {"addresses": [{"interface": "eth0", "address": "192.0.2.1/24"}], "hostname": "v"}
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "partial"
    assert [(r.item, r.status) for r in outcome.results] == [
        ("addresses/eth0", FAILED),
        ("hostname", APPLIED),
    ]
    assert "Not a directory" in outcome.results[0].detail


# --- atomicity ------------------------------------------------------------------


def test_failed_write_keeps_old_file_and_leaves_no_temp(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "etc/hostname").write_text("old\n")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # the module appliers calls
    outcome = default_registry().apply({"hostname": "new"}, ctx(root))
    assert outcome.results == [ItemResult("hostname", FAILED, "No space left on device")]
    assert (root / "etc/hostname").read_text() == "old\n"
    assert tree(root / "etc") == ["hostname", "passwd"]


# --- the registry -----------------------------------------------------------------


class MotdApplier:
    """A plug-in applier for the extra key "motd", as a third party would write one."""

    def check(self, value: object, item: str) -> tuple[list[Item], list[Problem]]:
        if not isinstance(value, str):
            return [], [Problem(item, "must be a string")]
        return [Item(item, value)], []

    def apply(self, item: Item, context: ApplyContext) -> ItemResult:
        changed = context.fs.write_file("/etc/motd", str(item.value).encode(), 0o644)
        return ItemResult(item.name, APPLIED if changed else UNCHANGED, "motd")


def test_extra_keys_unsupported_unless_registered(root: Path) -> None:
    payload = {"extra": {"motd": "hi\n", "org.example.x": {"a": 1}}}
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "partial"
    assert [(r.item, r.status) for r in outcome.results] == [
        ("extra/motd", UNSUPPORTED),
        ("extra/org.example.x", UNSUPPORTED),
    ]
    registry = default_registry()
    registry.register_extra("motd", MotdApplier())
    assert registry.capabilities() == ["hostname", "addresses", "ssh_keys", "extra/motd"]
    outcome = registry.apply(payload, ctx(root))
    assert [(r.item, r.status) for r in outcome.results] == [
        ("extra/motd", APPLIED),
        ("extra/org.example.x", UNSUPPORTED),
    ]
    assert (root / "etc/motd").read_text() == "hi\n"
    # A registered extra applier validates too, and its problems reject the payload.
    rejected = registry.apply({"hostname": "vm2", "extra": {"motd": 5}}, ctx(root))
    assert rejected.status == "error"
    assert rejected.results == [ItemResult("extra/motd", FAILED, "must be a string")]
    assert not (root / "etc/hostname").exists()


def test_registry_refuses_extra_as_kind() -> None:
    with pytest.raises(ValueError, match="register_extra"):
        default_registry().register("extra", MotdApplier())


@pytest.mark.parametrize("payload", [[], "x", None, {"extra": []}])
def test_payload_not_an_object(root: Path, payload: object) -> None:
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "error"
    assert outcome.error is not None and "must be an object" in outcome.error


def test_empty_payload_is_ok(root: Path) -> None:
    outcome = default_registry().apply({}, ctx(root))
    assert (outcome.status, outcome.results) == ("ok", [])


def test_several_problems_all_reported(root: Path) -> None:
    payload = {
        "hostname": "-x",
        "addresses": [{"interface": "../x", "address": "1.2.3.4/8"}],
        "ssh_keys": [{"user": "bob", "keys": ["ssh-ed25519 AAAA\nx"]}],
    }
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "error"
    assert [r.item for r in outcome.results] == ["hostname", "addresses[0]", "ssh_keys/bob"]
    assert outcome.error is not None
    for item in ("hostname:", "addresses[0]:", "ssh_keys/bob:"):
        assert item in outcome.error
    assert "\n" not in outcome.error


@pytest.mark.parametrize("interface", ["eth*", "e?", "en[01]", "wlan@0", "éth0"])
def test_pattern_interface_names_fail_their_item(root: Path, interface: str) -> None:
    """Valid kernel names, but networkd's Name= would read them as a pattern."""
    payload = {"hostname": "vm1", "addresses": [{"interface": interface, "address": "10.0.0.1/8"}]}
    outcome = default_registry().apply(payload, ctx(root))
    assert outcome.status == "partial"
    assert outcome.results[1].item == f"addresses/{interface}"
    assert outcome.results[1].status == FAILED
    assert "not supported by this agent" in outcome.results[1].detail
    assert not (root / "etc/systemd").exists()


def test_long_hostname_fails_its_item(root: Path) -> None:
    """253 characters are a valid host name, but the kernel takes 64."""
    name = ".".join(["a" * 60] * 2)
    outcome = default_registry().apply({"hostname": name}, ctx(root))
    assert outcome.status == "partial"
    assert outcome.results[0].status == FAILED
    assert "at most 64" in outcome.results[0].detail
    assert not (root / "etc/hostname").exists()


MALFORMED_OR_NOT = [
    {"hostname": "vm1.example.org"},
    {"hostname": "-vm"},
    {"hostname": ".".join(["a" * 63] * 4)},
    {"hostname": ".".join(["a" * 63] * 4) + "a"},
    {"hostname": 3},
    {"addresses": [{"interface": "eth0", "address": "192.0.2.1/24", "dns": ["::1"]}]},
    {"addresses": [{"interface": "eth*", "address": "192.0.2.1/24"}]},
    {"addresses": [{"interface": "eth0:1", "address": "192.0.2.1/24"}]},
    {"addresses": [{"interface": "eth0", "address": "192.0.2.1/24", "gateway": "::1"}]},
    {"addresses": [{"interface": "eth0", "address": "192.0.2.1"}]},
    {"addresses": [{"interface": "eth0", "address": "192.0.2.1/24", "x": 1}]},
    {
        "addresses": [
            {"interface": "a", "address": "::1/128"},
            {"interface": "a", "address": "::2/128"},
        ]
    },
    {"addresses": {"interface": "eth0"}},
    {"addresses": [{"interface": "eth0", "address": "fe80::1%eth0/64"}]},
    {"addresses": [{"interface": "eth0", "address": "192.0.2.1/24", "dns": None}]},
    {"addresses": [{"interface": "eth0", "address": "192.0.2.1/24", "gateway": "fe80::1%e"}]},
    {"ssh_keys": [{"user": "bob", "keys": ["ssh-ed25519 AAAA c"]}]},
    {"ssh_keys": [{"user": "bob", "keys": ["ssh-ed25519\tAAAA"]}]},
    {"ssh_keys": [{"user": "bob", "keys": ["ssh-ed25519 AAAA\n"]}]},
    {"ssh_keys": [{"user": "bob", "keys": ["ssh-ed25519 AAAA clé"]}]},
    {"ssh_keys": [{"user": "b" * 31, "keys": []}]},
    {"ssh_keys": [{"user": "b" * 32, "keys": []}]},
    {"ssh_keys": [{"user": "bob$", "keys": []}]},
    {"ssh_keys": [{"user": "bob", "keys": []}, {"user": "bob", "keys": []}]},
    {"ssh_keys": [{"user": "bob", "keys": [], "x": 1}]},
    {"extra": {"k": [1, {"a": None}]}},
]


@pytest.mark.parametrize("payload", MALFORMED_OR_NOT)
def test_appliers_agree_with_the_protocol_on_malformed(payload: dict[str, object]) -> None:
    """The appliers' validation (which names the item at fault) rejects exactly
    what the contract's validator rejects: no stricter, no looser."""
    from xen_channel_backend.protocol import validate_config_payload

    protocol_problems = validate_config_payload(payload)
    plan = default_registry().plan(payload)
    assert bool(plan.problems) == bool(protocol_problems), (plan.problems, protocol_problems)


def test_ssh_keys_without_chown_say_so(root: Path, real_keys: dict[str, str]) -> None:
    """An unprivileged agent (e.g. a test run as a user) cannot chown: it still
    writes the file, and the detail says the owner was not set."""
    payload = {"ssh_keys": [{"user": "bob", "keys": [real_keys["ed25519"]]}]}
    outcome = default_registry().apply(payload, ctx(root, may_chown=False))
    assert outcome.status == "ok"
    assert outcome.results[0].detail.endswith("(not chowned: the agent is not root)")
    path = root / "home/bob/.ssh/authorized_keys"
    assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (os.geteuid(), 0o600)
