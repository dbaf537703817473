"""Host facts read from the OS, as CloudStack's KVM agent reads them (files in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.hypervisor.hostinfo import (
    cpu_nominal_mhz,
    default_gateway,
    iscsi_initiator_name,
    os_name_version,
)

OS_RELEASE = 'NAME="Rocky Linux"\nVERSION_ID="9.3"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n'


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # versions.sh: redhat-release first, the name before "release", the word after it.
        (
            {"redhat-release": "CentOS Linux release 7.9.2009 (Core)\n", "os-release": OS_RELEASE},
            ("CentOS Linux", "7.9.2009"),
        ),
        ({"redhat-release": "Rocky Linux release 9.3 (Blue Onyx)\n"}, ("Rocky Linux", "9.3")),
        # No version in redhat-release: os-release's name and version.
        ({"redhat-release": "Something odd\n", "os-release": OS_RELEASE}, ("Rocky Linux", "9.3")),
        # Then lsb-release (Ubuntu), then os-release.
        (
            {
                "lsb-release": "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=22.04\nDISTRIB_CODENAME=jammy\n",
                "os-release": 'NAME="Ubuntu Linux"\nVERSION_ID="22.04"\n',
            },
            ("Ubuntu", "22.04"),
        ),
        ({"os-release": 'NAME="Debian GNU/Linux"\nVERSION_ID="12"\n'}, ("Debian GNU/Linux", "12")),
        ({"os-release": "NAME=Debian\n"}, ("Debian", "")),  # sid: no VERSION_ID
        ({}, ("Unknown Linux", "X.Y")),
    ],
)
def test_host_os_as_versions_sh_reports_it(
    tmp_path: Path, files: dict[str, str], expected: tuple[str, str]
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert os_name_version(tmp_path) == expected


ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
)


def test_default_gateway_from_the_route_table(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        ROUTE_HEADER
        + "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        + "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        + "eth1\t00000000\t01010A0A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    )
    assert default_gateway(route) == "192.0.2.1"  # the first default route's
    route.write_text(ROUTE_HEADER + "eth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert default_gateway(route) is None  # a default route without a gateway
    route.write_text(ROUTE_HEADER)
    assert default_gateway(route) is None
    assert default_gateway(tmp_path / "absent") is None


def test_cpu_speed_as_the_java_agent_reads_it(tmp_path: Path) -> None:
    cpuinfo, max_freq = tmp_path / "cpuinfo", tmp_path / "max_freq"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\n")
    max_freq.write_text("3300000\n")
    assert cpu_nominal_mhz(cpuinfo, max_freq) == 2400  # the model name's figure first
    cpuinfo.write_text("model name\t: Intel(R) Xeon(R) Processor\n")
    assert cpu_nominal_mhz(cpuinfo, max_freq) == 3300  # then cpufreq's maximum (kHz)
    max_freq.unlink()
    assert cpu_nominal_mhz(cpuinfo, max_freq) is None  # the caller asks libvirt


def test_iscsi_initiator_name(tmp_path: Path) -> None:
    path = tmp_path / "initiatorname.iscsi"
    assert iscsi_initiator_name(path) is None
    path.write_text("## generated\nInitiatorName=iqn.1993-08.org.debian:01:abcdef\n")
    assert iscsi_initiator_name(path) == "iqn.1993-08.org.debian:01:abcdef"
