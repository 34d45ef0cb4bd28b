"""scripts/install.sh's read of where the agent's unit gets PEERSERVE_OPERATOR_CA (which the agent takes over the
config), offline: the unit files' drop-ins and the files their EnvironmentFile= lines read, in every form systemd
accepts (systemd.syntax(7), systemd.unit(5), systemd.exec(5)). review18a F2: the check stayed silent on spaces around
"=", a continued line, prefix drop-ins, /usr/local/lib, EnvironmentFile= with spaces, a specifier or a glob, and
``KEY = value`` in the file. Run over a fake root (``unit_root``); systemd's own word (systemctl show) needs a booted
system and is not run here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/install.sh"
FUNCTIONS = ("service_settings", "environment_files", "environment_file_sets_it", "operator_ca_in_unit_files",
             "operator_ca_in_manager", "operator_ca_in_environment")  # fmt: skip
DROP_IN = "etc/systemd/system/peerserve-agent.service.d/x.conf"
ENV = "etc/peerserve/agent.env"


def found(root: Path) -> list[str]:
    """What install.sh's check names under ``root`` (paths relative to it), offline."""
    sed = " ".join(f"-e '/^{name}() {{/,/^}}/p'" for name in FUNCTIONS)
    script = f"""set -euo pipefail
service=peerserve-agent.service sd=offline
source <(sed -n -e '/^unit_root=/,/^set_it=/p' {sed} {SCRIPT})
unit_root={root}
operator_ca_in_environment"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return [line.removeprefix(f"{root}/") for line in out.stdout.splitlines()]


def make(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


UNIT_FORMS = {
    "plain": "[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=/etc/peerserve/operator-ca.pub\n",
    "spaces_around_eq": "[Service]\nEnvironment = PEERSERVE_OPERATOR_CA=/etc/peerserve/operator-ca.pub\n",
    "continued": "[Service]\nEnvironment=A=1 \\\n  PEERSERVE_OPERATOR_CA=/x\n",
    "second_word": '[Service]\nEnvironment="A=1" "PEERSERVE_OPERATOR_CA=x"\n',
    "specifier": "[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=%%E/peerserve/operator-ca.pub\n",
    "crlf": "[Service]\r\nEnvironment=PEERSERVE_OPERATOR_CA=/x\r\n",
}


@pytest.mark.parametrize("form", sorted(UNIT_FORMS))
def test_an_environment_line_in_any_form_is_found(tmp_path: Path, form: str) -> None:
    assert found(make(tmp_path, {DROP_IN: UNIT_FORMS[form]})) == [DROP_IN]


@pytest.mark.parametrize(
    "where",
    ["etc/systemd/system/peerserve-.service.d/x.conf", "etc/systemd/system/service.d/x.conf",
     "usr/local/lib/systemd/system/peerserve-agent.service.d/x.conf",
     "run/systemd/system/peerserve-agent.service.d/x.conf", "lib/systemd/system/peerserve-agent.service.d/x.conf"],
)  # fmt: skip
def test_every_drop_in_folder_systemd_reads_is_searched(tmp_path: Path, where: str) -> None:
    assert found(make(tmp_path, {where: UNIT_FORMS["plain"]})) == [where]


@pytest.mark.parametrize(
    "line",
    [f"EnvironmentFile=/{ENV}", f"EnvironmentFile=-/{ENV}", f"EnvironmentFile = /{ENV}", f"EnvironmentFile=/{ENV} ",
     "EnvironmentFile=%E/peerserve/agent.env", "EnvironmentFile=-/etc/peerserve/agent.*"],
)  # fmt: skip
def test_an_environment_file_in_any_form_is_read(tmp_path: Path, line: str) -> None:
    root = make(tmp_path, {DROP_IN: f"[Service]\n{line}\n", ENV: "PEERSERVE_OPERATOR_CA=/etc/peerserve/ca.pub\n"})
    assert found(root) == [ENV]


@pytest.mark.parametrize(
    "text", ["PEERSERVE_OPERATOR_CA = /etc/peerserve/ca.pub\n", "export PEERSERVE_OPERATOR_CA=/x\n",
             'PEERSERVE_OPERATOR_CA="/x"\r\n', "A=1\n  PEERSERVE_OPERATOR_CA='/x'\n"],
)  # fmt: skip
def test_an_assignment_in_the_environment_file_in_any_form_is_found(tmp_path: Path, text: str) -> None:
    assert found(make(tmp_path, {DROP_IN: f"[Service]\nEnvironmentFile=/{ENV}\n", ENV: text})) == [ENV]


def test_the_managers_default_environment_is_read(tmp_path: Path) -> None:
    conf = "etc/systemd/system.conf.d/env.conf"
    root = make(tmp_path, {conf: "[Manager]\nDefaultEnvironment=PEERSERVE_OPERATOR_CA=/x\n"})
    assert found(root) == [f"{conf} (DefaultEnvironment=)"]


@pytest.mark.parametrize(
    "text",
    ["[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=\n", '[Service]\nEnvironment="PEERSERVE_OPERATOR_CA="\n',
     "[Service]\n#Environment=PEERSERVE_OPERATOR_CA=/x\n;Environment=PEERSERVE_OPERATOR_CA=/x\n",
     "[Unit]\nEnvironment=PEERSERVE_OPERATOR_CA=/x\n", "[Service]\nEnvironment=XPEERSERVE_OPERATOR_CA=/x\n",
     f"[Service]\nEnvironmentFile=-/{ENV}.missing\n"],
)  # fmt: skip
def test_what_gives_the_variable_no_value_is_not_named(tmp_path: Path, text: str) -> None:
    """An empty value counts as unset (the agent reads it so too); a comment, another section, another name, a
    missing optional file and another unit's drop-in set nothing."""
    other = "etc/systemd/system/other.service.d/x.conf"
    assert found(make(tmp_path, {DROP_IN: text, other: UNIT_FORMS["plain"], ENV: "PEERSERVE_OPERATOR_CA=\n"})) == []
