"""The container image and the systemd unit: the Dockerfile builds hearth the way the tests
and CI do, runs it unprivileged with the libraries the binary needs, and the unit is sound.
Building the image itself needs a container runtime; without one that test is skipped (and
says so)."""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
UNIT = (ROOT / "deploy" / "systemd" / "hearth.service").read_text()


def stages():
    return re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]


def test_the_image_builds_hearth_as_the_tests_do():
    build = stages()[0]
    test_script = (ROOT / "scripts" / "test.sh").read_text()
    assert "cargo build --release --locked" in test_script
    assert re.search(r"^RUN cargo build --release --locked -p hearth$", build, flags=re.M)
    # The toolchain is the workspace's minimum Rust version or newer.
    msrv = re.search(r'rust-version = "([\d.]+)"', (ROOT / "Cargo.toml").read_text()).group(1)
    image = re.match(r"rust:([\d.]+)-", build).group(1)
    assert tuple(map(int, image.split("."))) >= tuple(map(int, msrv.split(".")))
    # Build dependencies: what scripts/install-deps.sh installs for llama.cpp (no promtool).
    for package in ("cmake", "clang", "libclang-dev"):
        assert package in build


def test_the_runtime_stage_is_unprivileged_and_has_the_binarys_libraries():
    runtime = stages()[-1]
    user = re.search(r"^USER (\S+)", runtime, flags=re.M).group(1)
    assert user not in ("root", "0")
    installed = re.search(r"apt-get install -y --no-install-recommends ([^\\&\n]+)", runtime).group(1).split()
    # Every shared library the binary links is in Debian slim or installed here.
    binary = ROOT / "target" / "release" / "hearth"
    libraries = re.findall(r"^\s*(\S+\.so[.\d]*)", subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, check=True).stdout, flags=re.M)
    in_slim = ("linux-vdso", "libc.so", "libm.so", "libgcc_s.so", "libstdc++.so", "ld-linux")
    for library in (lib.rsplit("/", 1)[-1] for lib in libraries):
        if library.startswith(in_slim):
            continue
        assert library.startswith("libgomp") and "libgomp1" in installed, library


def test_the_systemd_unit_is_hardened_and_listens_locally():
    assert re.search(r"^ExecStart=/usr/local/bin/hearth serve$", UNIT, flags=re.M)
    for setting in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                    "StateDirectory=hearth", "Environment=HEARTH_HOST=127.0.0.1"):
        assert setting in UNIT
    # Longer than hearth's own drain (HEARTH_SHUTDOWN_GRACE, 30 s by default).
    assert int(re.search(r"^TimeoutStopSec=(\d+)", UNIT, flags=re.M).group(1)) > 30
    if shutil.which("systemd-analyze"):
        unit = ROOT / "deploy" / "systemd" / "hearth.service"
        run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                             text=True)
        # A machine without /usr/local/bin/hearth reports only that.
        problems = [line for line in run.stderr.splitlines()
                    if line.strip() and "/usr/local/bin/hearth" not in line]
        assert not problems, run.stderr


def docker_available():
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.mark.skipif(not docker_available(), reason="no container runtime here (docker info fails)")
def test_the_image_builds_and_serves():
    tag = "hearth-test:latest"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=3600)
    run = subprocess.run(["docker", "run", "--rm", tag, "--version"], capture_output=True,
                         text=True, check=True)
    assert run.stdout.startswith("hearth ")
