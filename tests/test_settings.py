"""Settings: precedence, the INI file, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xen_channel_backend.errors import RunDirTooLong, SettingsError
from xen_channel_backend.paths import socket_path
from xen_channel_backend.settings import (
    DEFAULT_RUNDIR,
    LIBVIRT_CHANNEL_ROOTS,
    Settings,
    load_settings,
    parse_ini,
)


def write_config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "xen-channel.conf"
    path.write_text(text)
    return {"XEN_CHANNEL_CONFIG": str(path)}


def test_defaults_without_any_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The real default file is absent on this host; a missing default is fine.
    monkeypatch.setattr("xen_channel_backend.settings.DEFAULT_CONFIG", str(tmp_path / "none.conf"))
    settings = load_settings(environ={})
    assert settings == Settings(DEFAULT_RUNDIR, None, (DEFAULT_RUNDIR, *LIBVIRT_CHANNEL_ROOTS))


def test_file_values(tmp_path: Path) -> None:
    env = write_config(tmp_path, (
        "[xen-channel]\nrundir = /run/xc/\ngroup = kvm\n"
        "allowed_roots = /srv/a:/srv/b\n  /srv/c  /srv/a\n"
    ))
    settings = load_settings(environ=env)
    assert settings.rundir == "/run/xc"
    assert settings.group == "kvm"
    # The run directory is always a root; duplicates collapse; order kept.
    assert settings.allowed_roots == ("/run/xc", "/srv/a", "/srv/b", "/srv/c")


def test_empty_allowed_roots_means_run_directory_only(tmp_path: Path) -> None:
    env = write_config(tmp_path, "[xen-channel]\nallowed_roots =\n")
    assert load_settings(environ=env).allowed_roots == (DEFAULT_RUNDIR,)


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    env = write_config(tmp_path, "[xen-channel]\nrundir = /run/from-file\nallowed_roots =\n")
    assert load_settings(environ=env).rundir == "/run/from-file"
    env["XEN_CHANNEL_RUNDIR"] = "/run/from-env"
    assert load_settings(environ=env).rundir == "/run/from-env"
    settings = load_settings("/run/from-cli", environ=env)
    assert settings.rundir == "/run/from-cli"
    assert settings.allowed_roots == ("/run/from-cli",)


def test_named_file_missing_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"XEN_CHANNEL_CONFIG": missing})
    assert info.value.source == missing
    assert "XEN_CHANNEL_CONFIG" in info.value.message()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("rundir = /x\n", 1),  # no section header
        ("[xen-channel]\nrundir = /a\nrundir = /b\n", 3),  # duplicate key
        ("[xen-channel]\n= value\n", 2),  # no key
    ],
)
def test_malformed_file_is_one_line_with_position(tmp_path: Path, text: str, line: int) -> None:
    env = write_config(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env)
    message = info.value.message()
    assert "\n" not in message
    assert message.startswith(f"{env['XEN_CHANNEL_CONFIG']}:{line}: ")


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    env = write_config(tmp_path, "[xen-channel]\nallowed_root = /srv\n")
    with pytest.raises(SettingsError, match="unknown key 'allowed_root'"):
        load_settings(environ=env)


def test_other_sections_are_left_to_their_owners(tmp_path: Path) -> None:
    env = write_config(tmp_path, "[broker]\nanything = 1\n[xen-channel]\ngroup = 107\n")
    assert load_settings(environ=env).group == "107"


@pytest.mark.parametrize(
    "rundir", ["relative/dir", "/run/../etc", "/run/a,b", "/run/x\n", "/"],
)
def test_bad_run_directory_is_refused(rundir: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(rundir, environ={})
    assert "\n" not in info.value.message()


def test_bad_allowed_root_names_the_key(tmp_path: Path) -> None:
    env = write_config(tmp_path, "[xen-channel]\nallowed_roots = /ok:relative\n")
    with pytest.raises(SettingsError, match="allowed_roots"):
        load_settings(environ=env)


def test_bad_group_is_refused(tmp_path: Path) -> None:
    env = write_config(tmp_path, "[xen-channel]\ngroup = a b;c\n")
    with pytest.raises(SettingsError, match="group"):
        load_settings(environ=env)


def test_run_directory_too_long_is_refused_when_allocating() -> None:
    rundir = "/run/" + "d" * 60
    settings = load_settings(rundir, environ={})  # list/show can still read it
    with pytest.raises(RunDirTooLong) as info:
        socket_path(settings, "11111111-2222-3333-4444-555555555555", "a")
    assert info.value.rundir == rundir
    assert rundir in info.value.message()


def test_undecodable_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_bytes(b"[xen-channel]\ngroup = \xff\n")
    with pytest.raises(SettingsError, match="UTF-8"):
        load_settings(environ={"XEN_CHANNEL_CONFIG": str(path)})


# --- the lean INI reader agrees with configparser -----------------------------------

_lines = st.one_of(
    st.sampled_from(["", "# comment", "; comment", "[xen-channel]", "[other]", "[DEFAULT]",
                     "[]", "[a] trailing", "key", "=v", "  ; indented comment"]),
    st.builds(lambda k, sep, v: f"{k}{sep}{v}",
              st.sampled_from(["rundir", "Group", "allowed_roots", "x", " key "]),
              st.sampled_from(["=", " = ", ":", ": "]),
              st.from_regex(r"[a-z/ :.]{0,12}", fullmatch=True)),
    st.builds(lambda v: f"    {v}", st.from_regex(r"[a-z/]{1,8}", fullmatch=True)),
)


@given(st.lists(_lines, max_size=12))
def test_parse_ini_reads_what_configparser_reads(lines: list[str]) -> None:
    import configparser

    text = "\n".join(lines) + "\n"
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       default_section="\x00none")
    try:
        parser.read_string(text)
        expected: dict[str, dict[str, str]] | None = {
            name: dict(parser.items(name, raw=True)) for name in parser.sections()}
    except configparser.Error:
        expected = None
    try:
        got: dict[str, dict[str, str]] | None = parse_ini(text, "x.conf")
    except SettingsError:
        got = None
    assert got == expected
