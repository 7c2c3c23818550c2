"""Shared inputs for the translator tests: example domains and a CLI runner.

tests/test_convert.py checks outputs against goldens; the conformance tests
(tests/test_xl_conformance.py, tests/test_convert_libvirt.py) feed the same
outputs to the real xl and the real libvirt.  Keeping the list of cases here
means every xl.cfg and domain XML the tests produce is checked by both.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from xen_channel_backend.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "xml" / "examples"
DATA = Path(__file__).parent / "data"
LIBVIRT_PAIRS = DATA / "libvirt-xlconfigdata"


@dataclasses.dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("xen-channel: warning: ")]


def convert(*argv: str | Path, stdin: str = "") -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(["convert", *map(str, argv)], stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.xml"))


def pair_names() -> list[str]:
    return sorted(p.stem for p in LIBVIRT_PAIRS.glob("*.xml"))


def retarget_flags(example: str) -> list[str]:
    """The KVM example only has virtio channels: convert it as a KVM->Xen move."""
    return ["--retarget-virtio"] if example.startswith("kvm-") else []


def into_xml_outputs() -> dict[str, str]:
    """Every domain XML that ``convert --to libvirt --into`` produces in the tests."""
    outputs: dict[str, str] = {}
    for name in example_names():
        result = convert(
            "--to", "libvirt", EXAMPLES / f"{name}.cfg", "--into", EXAMPLES / f"{name}.xml"
        )
        assert result.code == 0, result.err
        outputs[f"example-{name}"] = result.out
        # Across examples too: an HVM guest's channels put into a PV domain.
        other = "xen-hvm-guest" if name != "xen-hvm-guest" else "xen-pv-guest"
        result = convert(
            "--to", "libvirt", EXAMPLES / f"{other}.cfg", "--into", EXAMPLES / f"{name}.xml"
        )
        assert result.code == 0, result.err
        outputs[f"example-{other}-into-{name}"] = result.out
    for name in pair_names():
        result = convert(
            "--to",
            "libvirt",
            LIBVIRT_PAIRS / f"{name}.cfg",
            "--into",
            LIBVIRT_PAIRS / f"{name}.xml",
        )
        assert result.code == 0, result.err
        outputs[f"libvirt-{name}"] = result.out
    return outputs


def into_cfg_outputs() -> dict[str, str]:
    """Every xl.cfg that ``convert --to xl`` produces in the tests (line or --into file)."""
    outputs: dict[str, str] = {}
    for name in example_names():
        flags = retarget_flags(name)
        result = convert("--to", "xl", *flags, EXAMPLES / f"{name}.xml")
        assert result.code == 0, result.err
        outputs[f"example-{name}-line"] = result.out
        result = convert(
            "--to", "xl", *flags, EXAMPLES / f"{name}.xml", "--into", EXAMPLES / f"{name}.cfg"
        )
        assert result.code == 0, result.err
        outputs[f"example-{name}-into"] = result.out
    for name in pair_names():
        result = convert(
            "--to", "xl", LIBVIRT_PAIRS / f"{name}.xml", "--into", LIBVIRT_PAIRS / f"{name}.cfg"
        )
        assert result.code == 0, result.err
        outputs[f"libvirt-{name}"] = result.out
    return outputs
