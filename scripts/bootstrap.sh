#!/usr/bin/env bash
# Installs what the agent and its tests need on a Debian machine, then the .venv.
# Idempotent and quick once done: apt runs only for missing packages, pip only when
# pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build libvirt-python (libvirt-dev, pkg-config, gcc), run the two-host lab (libvirtd, QEMU,
# qemu-img for disk images, tcpdump, iproute2, binutils for the test guest, gcc for its
# clusterfs shim) and check the systemd unit (systemd).
PKGS=(python3-venv python3-dev gcc pkg-config libvirt-dev libvirt-daemon-system
      libvirt-clients qemu-system-x86 qemu-utils tcpdump iproute2 binutils systemd openssl)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
        echo "bootstrap: run as root, or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
