"""scripts/install.sh's read of where the agent's unit gets PEERSERVE_OPERATOR_CA (which the agent takes over the
config), offline: the unit files' drop-ins and the files their EnvironmentFile= lines read, in every form systemd
accepts (systemd.syntax(7), systemd.unit(5), systemd.exec(5)). review18a F2: the check stayed silent on spaces around
"=", a continued line, prefix drop-ins, /usr/local/lib, EnvironmentFile= with spaces, a specifier or a glob, and
``KEY = value`` in the file. Run over a fake root (``unit_root``); systemd's own word (systemctl show) needs a booted
system and is not run here."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/install.sh"
FUNCTIONS = ("unit_lines", "section_settings", "environment_value_sets_it", "environment_files", "globbed_files",
             "environment_file_sets_it", "environment_file_named", "operator_ca_in_unit_files", "manager_files",
             "manager_setting_sets_it", "cmdline_sets_it", "efi_options_text", "efi_cache_text", "pid1_started",
             "manager_own_environment", "operator_ca_in_manager", "operator_ca_in_environment")  # fmt: skip
DROP_IN = "etc/systemd/system/peerserve-agent.service.d/x.conf"
ENV = "etc/peerserve/agent.env"


def run(root: str, call: str, sd: str = "offline", env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """install.sh's check functions, with ``unit_root`` ``root``, running ``call``; its standard output."""
    sed = " ".join(f"-e '/^{name}() {{/,/^}}/p'" for name in FUNCTIONS)
    script = f"""set -euo pipefail
service=peerserve-agent.service sd={sd}
source <(sed -n -e '/^unit_root=/,/^set_it=/p' -e "/^extract_words_awk='/,/^'$/p" {sed} {SCRIPT})
unit_root={root}
{call}"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env, cwd=cwd)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return out.stdout


def found(root: Path) -> list[str]:
    """What install.sh's check names under ``root`` (paths relative to it), offline."""
    return [line.removeprefix(f"{root}/") for line in run(str(root), "operator_ca_in_environment").splitlines()]


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
    # review18d F2: the forms the reader missed (systemd's conf-parser accepts each)
    "bom": "\ufeff[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=/x\n",
    "comment_in_continuation": "[Service]\nEnvironment=A=1 \\\n# a note\n; another\n PEERSERVE_OPERATOR_CA=/x\n",
    "even_backslashes": "[Service]\nEnvironment=A=x\\\\\nEnvironment=PEERSERVE_OPERATOR_CA=/x\n",
    "three_backslashes": "[Service]\nEnvironment=A=x\\\\\\\n PEERSERVE_OPERATOR_CA=/x\n",
    "continued_at_eof": "[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=/x \\",
    "space_after_quote": '[Service]\nEnvironment="PEERSERVE_OPERATOR_CA= /etc/other.pub"\n',
    # review18e F-A: systemd's read_line() ends a line at CR, LF, CRLF or LFCR, each with an optional NUL after it,
    # or at a NUL alone; the reader split only at LF. The first BOM that starts a line is dropped, not only line 1's;
    # only spaces and tabs may come before a comment's '#' (a vertical tab makes it text, here continued into)
    "cr_only": "[Service]\rEnvironment=PEERSERVE_OPERATOR_CA=/x\r",
    "cr_inside_crlf": "[Service]\r\nEnvironment=A=1\rEnvironment=PEERSERVE_OPERATOR_CA=/x\r\n",
    "nul": "[Service]\nEnvironment=A=1\0Environment=PEERSERVE_OPERATOR_CA=/x\n",
    "lfcr_continued": "[Service]\nEnvironment=A=1 \\\n\r PEERSERVE_OPERATOR_CA=/x\n",
    "crlf_nul_continued": "[Service]\r\nEnvironment=A=1 \\\r\n\0 PEERSERVE_OPERATOR_CA=/x\r\n",
    "bom_after_a_comment": "# a note\n\ufeff[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=/x\n",
    "vertical_tab_before_hash": "[Service]\nEnvironment=A=1 \\\n\v# PEERSERVE_OPERATOR_CA=/x\n",
    # review18e F-C: each word unquoted and C-unescaped, as systemd's extract_first_word() does for Environment=
    "split_quotes": '[Service]\nEnvironment="PEERSERVE_"OPERATOR_CA=/x\n',
    "quote_inside": "[Service]\nEnvironment=PEERSERVE_'OPERATOR'_CA=/x\n",
    "hex_escape": "[Service]\nEnvironment=\\x50EERSERVE_OPERATOR_CA=/x\n",
    "hex_escape_in_quotes": '[Service]\nEnvironment="PEERSERVE_OPERATOR\\x5fCA=/x"\n',
    "octal_escape": "[Service]\nEnvironment=\\120EERSERVE_OPERATOR_CA=/x\n",
    "unicode_escapes": "[Service]\nEnvironment=\\u0050EERSERVE_OPERATOR_C\\U00000041=/x\n",
    "escaped_equals": "[Service]\nEnvironment=PEERSERVE_OPERATOR_CA\\x3d/x\n",
    "words_before_an_error": '[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=/x "unclosed\n',
    "specifier_in_the_value": "[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=%E/ca.pub\n",
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


def test_a_specifier_in_a_variables_name_that_could_make_it_this_one_is_refused_as_unchecked(tmp_path: Path) -> None:
    """review18e F-C: systemd expands specifiers in each Environment= word after unquoting it, name included: a name
    whose literal text before a specifier could begin PEERSERVE_OPERATOR_CA cannot be checked here; another name
    (OTHER_%i) and %% (a literal %) are read as they are."""
    text = "[Service]\nEnvironment=PEERSERVE_%i=x OTHER_%i=y PEERSERVE_OPERATOR_CA%%=z PEERSERVE_%i\\n\\x1b=x\n"
    said = ", a specifier this check cannot expand: cannot check whether it"
    assert sorted(found(make(tmp_path, {DROP_IN: text}))) == [  # decoded control characters are not printed raw
        f"{DROP_IN}: Environment=PEERSERVE_%i=x{said}",
        f"{DROP_IN}: Environment=PEERSERVE_%i??=x{said}",
    ]


def test_the_unit_file_itself_is_read_offline(tmp_path: Path) -> None:
    """review18e F-E: a full copy of the unit (systemctl edit --full, in /etc) was read by the online check only."""
    unit = "etc/systemd/system/peerserve-agent.service"
    root = make(tmp_path, {unit: f"[Unit]\nDescription=x\n[Service]\nEnvironmentFile=/{ENV}\n",
                           ENV: "PEERSERVE_OPERATOR_CA=/x\n"})  # fmt: skip
    assert found(root) == [ENV]
    assert found(make(tmp_path / "b", {unit: "[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=/x\n"})) == [unit]


def test_the_environment_files_systemctl_shows_are_read_as_shown(tmp_path: Path) -> None:
    """review18e F-E: systemctl show prints EnvironmentFiles with their specifiers expanded; the check expanded
    them again, so a literal '%' made the path "cannot check" and it went unread, and %E in a name became /etc."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shown = "/etc/peerserve/100%.env (ignore_errors=no)\n/etc/peerserve/%E.env (ignore_errors=yes)\n"
    (bin_dir / "systemctl").write_text(
        f"#!/bin/bash\nif [ \"$1 $2 $3\" = 'show -p EnvironmentFiles' ]; then printf %s '{shown}'; fi\n"
    )
    (bin_dir / "systemctl").chmod(0o755)
    root = make(tmp_path / "root", {"etc/peerserve/100%.env": "PEERSERVE_OPERATOR_CA=/x\n",
                                    "etc/peerserve/%E.env": "PEERSERVE_OPERATOR_CA=/y\n"})  # fmt: skip
    out = run(str(root), "operator_ca_in_environment", sd="running", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.splitlines() == [f"{root}/etc/peerserve/%E.env", f"{root}/etc/peerserve/100%.env"]


def test_an_environment_file_named_with_a_specifier_it_cannot_expand_is_refused_as_unchecked(tmp_path: Path) -> None:
    """review18d F2: %N, %h and the like were expanded to nothing known and the file was silently not read; now the
    check names the line as one it cannot check (install.sh refuses --no-operator-ca on it). %% is a literal %."""
    root = make(tmp_path, {DROP_IN: "[Service]\nEnvironmentFile=-/etc/peerserve/%N.env\n",
                           "etc/peerserve/peerserve-agent.env": "PEERSERVE_OPERATOR_CA=/x\n"})  # fmt: skip
    assert found(root) == [f"{DROP_IN}: EnvironmentFile=-/etc/peerserve/%N.env, a specifier this check cannot expand: "
                           "cannot check whether it"]  # fmt: skip
    literal = make(tmp_path / "literal", {DROP_IN: "[Service]\nEnvironmentFile=/etc/peerserve/100%%E.env\n",
                                          "etc/peerserve/100%E.env": "PEERSERVE_OPERATOR_CA=/x\n"})  # fmt: skip
    assert found(literal) == ["etc/peerserve/100%E.env"]


@pytest.mark.parametrize(
    "text", ["PEERSERVE_OPERATOR_CA = /etc/peerserve/ca.pub\n", "export PEERSERVE_OPERATOR_CA=/x\n",
             'PEERSERVE_OPERATOR_CA="/x"\r\n', "A=1\n  PEERSERVE_OPERATOR_CA='/x'\n",
             'PEERSERVE_OPERATOR_CA=" /etc/other.pub"\n', "A=1\rPEERSERVE_OPERATOR_CA=/x\r"],
)  # fmt: skip
def test_an_assignment_in_the_environment_file_in_any_form_is_found(tmp_path: Path, text: str) -> None:
    assert found(make(tmp_path, {DROP_IN: f"[Service]\nEnvironmentFile=/{ENV}\n", ENV: text})) == [ENV]


@pytest.mark.parametrize("folder", ["etc", "run", "usr/local/lib", "usr/lib", "lib"])
def test_the_managers_default_environment_is_read(tmp_path: Path, folder: str) -> None:
    """review18d F1: only /etc's system.conf.d was read; systemd reads /run's, /usr/local/lib's and /usr/lib's too.
    review18e: read as systemd reads it (a CR line end, split quotes)."""
    conf = f"{folder}/systemd/system.conf.d/env.conf"
    root = make(tmp_path, {conf: "[Manager]\nDefaultEnvironment=PEERSERVE_OPERATOR_CA=/x\n"})
    assert found(root) == [f"{conf} (DefaultEnvironment=)"]
    other = make(tmp_path / "b", {conf: '[Manager]\rDefaultEnvironment=A=1 "PEERSERVE_"OPERATOR_CA=/x\r'})
    assert found(other) == [f"{conf} (DefaultEnvironment=)"]


@pytest.mark.parametrize(
    ("cmdline", "named"),
    [("ro quiet systemd.setenv=PEERSERVE_OPERATOR_CA=/etc/peerserve/ca.pub splash\n", True),
     # review18e F-D: systemd unquotes each word wherever its quotes are; a backslash is kept (newer systemd) or
     # dropped (older): either reading counts; rd. is the initrd's (counted: the check cannot tell it left)
     ('ro systemd.setenv="PEERSERVE_OPERATOR_CA=/x"\n', True),
     ('ro systemd.setenv=PEERSERVE_OPERATOR_CA="/x y"\n', True),
     ("ro systemd.setenv=PEERSERVE_'OPERATOR'_CA=/x\n", True), ("ro systemd.setenv=PEERSERVE\\_OPERATOR_CA=/x\n", True),
     ("ro rd.systemd.setenv=PEERSERVE_OPERATOR_CA=/x\n", True),
     ('ro systemd.setenv=PEERSERVE_OPERATOR_CA=" "\n', False),
     ('ro "systemd.setenv=PEERSERVE_OPERATOR_CA=/x"\n', True), ("ro\tsystemd.setenv=PEERSERVE_OPERATOR_CA=/x\n", True),
     ("ro systemd.setenv=PEERSERVE_OPERATOR_CA=\n", False), ("ro systemd.setenv=XPEERSERVE_OPERATOR_CA=/x\n", False),
     ("ro PEERSERVE_OPERATOR_CA=/x\n", False)],
)  # fmt: skip
def test_the_kernel_command_lines_setenv_is_read(tmp_path: Path, cmdline: str, named: bool) -> None:
    """review18d F1: the manager passes the kernel's ``systemd.setenv=`` to every unit (systemd(1)); it was missed."""
    root = make(tmp_path, {"proc/cmdline": cmdline})
    assert found(root) == (["proc/cmdline (systemd.setenv= on the kernel command line)"] if named else [])


def test_the_managers_environment_is_asked_whatever_passenvironment_says(tmp_path: Path) -> None:
    """review18d F1: ``systemctl set-environment PEERSERVE_OPERATOR_CA=...`` reaches every unit, but the block was
    asked only where the unit's PassEnvironment= named the variable (which takes PID 1's own environment instead).
    systemd needs a booted system: the systemctl here answers as a real one does for a unit with no Environment= and
    no PassEnvironment=, and a manager block holding the variable (``show-environment`` prints NAME=value lines)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    block = "LANG=C.UTF-8\nPATH=/usr/local/sbin:/usr/bin\nPEERSERVE_OPERATOR_CA=/etc/peerserve/operator-ca.pub\n"
    systemctl.write_text(f"#!/bin/bash\nif [ \"$1\" = show-environment ]; then printf '{block}'; fi\n")
    systemctl.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    out = run(str(make(tmp_path / "root", {})), "operator_ca_in_environment", sd="running", env=env).splitlines()
    assert out == [
        "the service manager's environment, which every unit gets (systemctl show-environment; "
        "systemctl unset-environment PEERSERVE_OPERATOR_CA, or its systemd.setenv= or DefaultEnvironment=)"
    ]
    systemctl.write_text("#!/bin/bash\nif [ \"$1\" = show-environment ]; then printf 'PEERSERVE_OPERATOR_CA=\\n'; fi\n")
    assert run(str(tmp_path / "root"), "operator_ca_in_environment", sd="running", env=env) == ""  # empty: unset


def test_a_relative_environment_file_is_not_read_nor_taken_for_an_option(tmp_path: Path) -> None:
    """review18d F8: systemd takes only an absolute EnvironmentFile=; ``sed "$1"`` read a path starting with '-' as
    an option. Run with no fake root, in a folder holding such files."""
    (tmp_path / "-n").write_text("PEERSERVE_OPERATOR_CA=/x\n")
    (tmp_path / "rel.env").write_text("PEERSERVE_OPERATOR_CA=/x\n")
    assert run("", "environment_files --n; environment_files rel.env; environment_files -rel.env", cwd=tmp_path) == ""
    assert run("", "environment_file_sets_it -n", cwd=tmp_path) == "set\n"  # a file, never an option


@pytest.mark.parametrize(
    "text",
    ["[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=\n", '[Service]\nEnvironment="PEERSERVE_OPERATOR_CA="\n',
     "[Service]\n#Environment=PEERSERVE_OPERATOR_CA=/x\n;Environment=PEERSERVE_OPERATOR_CA=/x\n",
     "[Unit]\nEnvironment=PEERSERVE_OPERATOR_CA=/x\n", "[Service]\nEnvironment=XPEERSERVE_OPERATOR_CA=/x\n",
     f"[Service]\nEnvironmentFile=-/{ENV}.missing\n",
     "[Service]\nEnvironment=A=1 \\\\\n#Environment=PEERSERVE_OPERATOR_CA=/x\n",
     # review18e: what systemd reads as no such assignment (an empty line ends a continuation: CR CR is two line
     # ends; "=" alone is a word; an unknown escape ends the line's words; a blank value by escape)
     "[Service]\nEnvironment=A=1 \\\r\r PEERSERVE_OPERATOR_CA=/x\n",
     "[Service]\nEnvironment=PEERSERVE_OPERATOR_CA = /x\n",
     "[Service]\nEnvironment=PEERSERVE_OPERATOR_CA=/x\\q\n", '[Service]\nEnvironment="PEERSERVE_OPERATOR_CA=\\s"\n'],
)  # fmt: skip
def test_what_gives_the_variable_no_value_is_not_named(tmp_path: Path, text: str) -> None:
    """An empty value counts as unset (the agent reads it so too); a comment, another section, another name, a
    missing optional file and another unit's drop-in set nothing."""
    other = "etc/systemd/system/other.service.d/x.conf"
    assert found(make(tmp_path, {DROP_IN: text, other: UNIT_FORMS["plain"], ENV: "PEERSERVE_OPERATOR_CA=\n"})) == []


def test_an_environment_line_longer_than_an_environment_string_may_be_is_read(tmp_path: Path) -> None:
    """review19b F1: the value went to awk in its environment, where one string is capped at 128 KiB: a 180 KB line
    (systemd takes up to 1 MiB a line, each word under 128 KiB) failed the exec, inside ``< <(...)``, unnoticed."""
    long = " ".join(f"A{i}={'x' * 60_000}" for i in range(3))
    line = f"Environment={long} PEERSERVE_OPERATOR_CA=/x\n"
    conf = "etc/systemd/system.conf.d/env.conf"
    root = make(tmp_path, {DROP_IN: f"[Service]\n{line}", conf: f"[Manager]\nDefault{line}"})
    assert found(root) == [f"{conf} (DefaultEnvironment=)", DROP_IN]


def test_a_reader_that_fails_makes_the_check_say_it_cannot_check(tmp_path: Path) -> None:
    """review19b F1: a failed helper (here awk, failing for every reading but section_settings') said nothing, and
    --no-operator-ca went ahead; now each place it failed on is named as one this check cannot check."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    awk = bin_dir / "awk"
    awk.write_text('#!/bin/sh\ncase "$*" in *"v=PEERSERVE_OPERATOR_CA"*) exit 2 ;; esac\nexec /usr/bin/awk "$@"\n')
    awk.chmod(0o755)
    conf = "etc/systemd/system.conf.d/env.conf"
    files = {DROP_IN: "[Service]\nEnvironment=A=1\n", conf: "[Manager]\nDefaultEnvironment=A=1\n"}
    files["proc/cmdline"] = "ro\n"
    root = make(tmp_path / "root", files)
    out = run(str(root), "operator_ca_in_environment", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    unread = ": this check failed to read it: cannot check whether it"
    assert out.splitlines() == [
        f"{root}/{conf}: a DefaultEnvironment= line{unread}",
        f"{root}/{DROP_IN}: an Environment= line{unread}",
        f"{root}/proc/cmdline (the kernel command line){unread}",
    ]
    awk.write_text("#!/bin/sh\nexit 2\n")  # section_settings' too
    out = run(str(root), "operator_ca_in_environment", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.splitlines() == [f"{root}/{conf}{unread}", f"{root}/{DROP_IN}{unread}",
                                f"{root}/proc/cmdline (the kernel command line){unread}"]  # fmt: skip


@pytest.mark.parametrize(
    "text",
    ['PEERSERVE_OPERATOR_CA=""/x\n', "PEERSERVE_OPERATOR_CA=''/x\n", 'PEERSERVE_OPERATOR_CA="\n/x"\n',
     "PEERSERVE_OPERATOR_CA=#x\n", "PEERSERVE_OPERATOR_CA='#x'\n", 'PEERSERVE_OPERATOR_CA="" /x\n',
     "PEERSERVE_OPERATOR_CA=\\\n/x\n", 'PEERSERVE_OPERATOR_CA="\\"\n', "PEERSERVE_OPERATOR_CA=\"unclosed",
     "PEERSERVE_OPERATOR_CA=;x\n", "# a note \\\nPEERSERVE_OPERATOR_CA=/x\n", "  \t\rPEERSERVE_OPERATOR_CA\t=\t/x",
     "PEERSERVE_OPERATOR_CA=\\x\n"],
)  # fmt: skip
def test_an_environment_file_is_read_as_systemd_reads_it(tmp_path: Path, text: str) -> None:
    """review19b F2: systemd's env-file parser (src/basic/env-file.c) gives the variable a value in each of these:
    a closed quote goes back to before the value (""/x is "/x"), a quote runs across lines, '#' where a value starts
    is text, an escaped line end is dropped; a comment ending in a backslash continues onto the next line before
    systemd 254, not from 254 on (read both ways). A line-wise pattern missed the first five."""
    assert found(make(tmp_path, {DROP_IN: f"[Service]\nEnvironmentFile=/{ENV}\n", ENV: text})) == [ENV]


@pytest.mark.parametrize(
    "text",
    ['PEERSERVE_OPERATOR_CA=""\n', "PEERSERVE_OPERATOR_CA='  '\n", 'PEERSERVE_OPERATOR_CA="\n"\n',
     'A="\nPEERSERVE_OPERATOR_CA=/x\n"\n', "A=1 \\\nPEERSERVE_OPERATOR_CA=/x\n", "#PEERSERVE_OPERATOR_CA=/x\n",
     ";PEERSERVE_OPERATOR_CA=/x\n", "XPEERSERVE_OPERATOR_CA=/x\n", "PEERSERVE_OPERATOR_CA=\\ \n"],
)  # fmt: skip
def test_what_an_environment_file_gives_no_value_is_not_named(tmp_path: Path, text: str) -> None:
    """Inside another variable's quoted or continued value, in a comment, or blank: systemd sets nothing here."""
    assert found(make(tmp_path, {DROP_IN: f"[Service]\nEnvironmentFile=/{ENV}\n", ENV: text})) == []


def test_an_environment_file_the_check_fails_to_read_is_named_as_unchecked(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    awk = bin_dir / "awk"
    awk.write_text('#!/bin/sh\ncase "$*" in *"v=PEERSERVE_OPERATOR_CA"*) exit 2 ;; esac\nexec /usr/bin/awk "$@"\n')
    awk.chmod(0o755)
    root = make(tmp_path / "root", {DROP_IN: f"[Service]\nEnvironmentFile=/{ENV}\n", ENV: "A=1\n"})
    out = run(str(root), "operator_ca_in_environment", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.splitlines() == [f"{root}/{ENV}: this check failed to read it: cannot check whether it"]


OFFLINE = (
    " names PEERSERVE_OPERATOR_CA, which takes it from the service manager's own environment: offline, what that will "
    "start with (from the kernel's command line at boot, or from a container manager) is not known here: cannot check "
    "whether it"
)
MANAGER_CONF = "etc/systemd/system.conf.d/m.conf"
PASSED = " (ManagerEnvironment=, which PassEnvironment= passes to the agent)"


@pytest.mark.parametrize(
    ("line", "names"),
    [("PassEnvironment=PEERSERVE_OPERATOR_CA", True), ('PassEnvironment=A "PEERSERVE_"OPERATOR_CA B', True),
     ("PassEnvironment = \\x50EERSERVE_OPERATOR_CA", True), ("PassEnvironment=PEERSERVE_%i", False),
     ("PassEnvironment=PEERSERVE_OPERATOR_CAX OTHER_%i PEERSERVE_OPERATOR_CA=/x", False)],
)  # fmt: skip
def test_passenvironment_naming_the_variable_reads_the_managers_own_environment_offline(
    tmp_path: Path, line: str, names: bool
) -> None:
    """review19b F7: ``PassEnvironment=PEERSERVE_OPERATOR_CA`` with ``[Manager] ManagerEnvironment=`` in a
    system.conf.d file gives the agent the variable. tidy20: the ManagerEnvironment= is read (and named); offline
    (an image for a later boot) what PID 1 will start with is not known, so naming the variable stays "cannot check".
    A specifier that could make a name this one is "cannot check" itself; other names read nothing."""
    root = make(tmp_path, {DROP_IN: f"[Service]\n{line}\n",
                           MANAGER_CONF: "[Manager]\nManagerEnvironment=PEERSERVE_OPERATOR_CA=/x\n"})  # fmt: skip
    if names:
        assert found(root) == [f"{MANAGER_CONF}{PASSED}", f"PassEnvironment= in {root}/{DROP_IN}{OFFLINE}"]
    elif "%i" in line.split()[0]:
        assert found(root) == [f"{DROP_IN}: PassEnvironment=PEERSERVE_%i, a specifier this check cannot expand: "
                               "cannot check whether it"]  # fmt: skip
    else:
        assert found(root) == []


def running_root(tmp_path: Path, files: dict[str, str], environ: bytes = b"HOME=/\0TERM=linux\0") -> Path:
    """A fake root of a running system whose PID 1 started an hour from now (booted 1,000 s before, started 1,000 s
    of clock ticks later): every file made here is older than it (the check reads ctimes, which cannot be set back;
    ``pid_1_starts_now`` moves the start to now)."""
    root = make(tmp_path, {"proc/1/stat": f"1 (systemd (x)) S 0 1 1 0 -1 4194560 {' '.join(['0'] * 12)} "
                                          f"{1000 * CLK_TCK} 1 2\n",
                           **files})  # fmt: skip
    (root / "proc/stat").write_text(f"cpu 1 2 3\nbtime {int(time.time()) + 3600 - 1000}\n")
    (root / "proc/1/environ").write_bytes(environ)
    return root


def pid_1_starts_now(root: Path) -> None:
    """PID 1 of ``root`` started now, after everything made there so far, and the clock then passes its second (the
    check compares whole seconds), so that whatever changes next is newer than it."""
    start = int(time.time())
    (root / "proc/stat").write_text(f"cpu 1 2 3\nbtime {start - 1000}\n")
    time.sleep(max(0.0, start + 1.05 - time.time()))


CLK_TCK = int(subprocess.run(["getconf", "CLK_TCK"], capture_output=True, text=True, check=True).stdout)


def running(root: Path, tmp_path: Path, pass_environment: str = "") -> list[str]:
    """The check on a running system under ``root``, systemctl answering that the unit passes ``pass_environment``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(
        f"#!/bin/bash\nif [ \"$1 $2 $3\" = 'show -p PassEnvironment' ]; then echo '{pass_environment}'; fi\n"
    )
    systemctl.chmod(0o755)
    out = run(str(root), "operator_ca_in_environment", sd="running", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    return [line.removeprefix(f"{root}/") for line in out.splitlines()]


def test_passenvironment_on_a_running_system_reads_the_managers_own_environment(tmp_path: Path) -> None:
    """tidy20: running, the manager's own environment is what PID 1 started with (/proc/1/environ) plus its
    ManagerEnvironment= (the files): where neither gives the variable a value, PassEnvironment= naming it is no
    longer refused; where one does, it is named. Either way systemd's own word (systemctl show) or a drop-in."""
    root = running_root(tmp_path / "a", {DROP_IN: "[Service]\nPassEnvironment=PEERSERVE_OPERATOR_CA\n",
                                         MANAGER_CONF: "[Manager]\nManagerEnvironment=OTHER=1\n"})  # fmt: skip
    assert running(root, tmp_path) == []
    assert running(root, tmp_path, "A PEERSERVE_OPERATOR_CA") == []
    (root / MANAGER_CONF).write_text("[Manager]\nManagerEnvironment=PEERSERVE_OPERATOR_CA=/x\n")
    assert running(root, tmp_path) == [f"{MANAGER_CONF}{PASSED}"]
    environ = b"HOME=/\0PEERSERVE_OPERATOR_CA=\n/etc/ca.pub\0"  # a value after a newline still counts
    started = running_root(tmp_path / "b", {}, environ)
    assert running(started, tmp_path, "PEERSERVE_OPERATOR_CA") == [
        "proc/1/environ (the environment the service manager started with, which PassEnvironment= passes to the agent)"
    ]
    blank = running_root(tmp_path / "c", {}, b"PEERSERVE_OPERATOR_CA= \n\0")
    assert running(blank, tmp_path, "PEERSERVE_OPERATOR_CA") == []


@pytest.mark.parametrize(
    ("cmdline", "named"),
    [("ro PEERSERVE_OPERATOR_CA=/x\n", True), ('ro "PEERSERVE_OPERATOR_CA=/x y"\n', True),
     ("ro PEERSERVE_OPERATOR_CA=\n", False), ("ro -- PEERSERVE_OPERATOR_CA=/x\n", False),
     ("ro systemd.setenv=PEERSERVE_OPERATOR_CA=/x\n", False), ("ro XPEERSERVE_OPERATOR_CA=/x\n", False),
     # review20b L1: the kernel's next_arg() knows only double quotes, and takes off one at each end of a value
     ("ro PEERSERVE_OPERATOR_CA=''\n", True), ('ro PEERSERVE_OPERATOR_CA=""""\n', True),
     ('ro PEERSERVE_OPERATOR_CA=""\n', False), ("ro 'PEERSERVE_OPERATOR_CA=/x'\n", False),
     ('ro "PEERSERVE_OPERATOR_CA=/x"\n', True), ("ro\x0bPEERSERVE_OPERATOR_CA=/x\n", True),
     # review20b M1: the whole text is read, a CR or LF a blank like any other
     ("ro\nPEERSERVE_OPERATOR_CA=/x\n", True), ("ro\rPEERSERVE_OPERATOR_CA=/x\n", True)],
)  # fmt: skip
def test_the_kernels_environment_for_pid_1_is_read_where_passenvironment_names_the_variable(
    tmp_path: Path, cmdline: str, named: bool
) -> None:
    """The kernel gives PID 1 each NAME=value word of its command line it does not know (before "--"); PID 1 may
    have been started since (switch-root), so /proc/1/environ alone could miss it: the command line is read too.
    (systemd.setenv= is the manager's default environment for units, read apart: here it is not PID 1's own.)"""
    root = running_root(tmp_path, {"proc/cmdline": cmdline})
    expected = ["proc/cmdline (PEERSERVE_OPERATOR_CA= on the kernel command line: the kernel gives it to PID 1, which "
                "PassEnvironment= passes to the agent)"] if named else []  # fmt: skip
    setenv = ["proc/cmdline (systemd.setenv= on the kernel command line)"] if "setenv" in cmdline else []
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == (expected or setenv)
    assert running(root, tmp_path) == setenv  # no PassEnvironment=: PID 1's own environment reaches no unit


CHANGED = (": changed since the service manager started, and a ManagerEnvironment= taken out of it (or out of a file "
           "removed from it) stays in the manager's environment until it restarts (reboot), which PassEnvironment= "
           "passes to the agent: cannot check whether it")  # fmt: skip


@pytest.mark.parametrize(
    "where",
    [f"{d}/systemd/system.conf{d_}" for d in ("etc", "usr/lib") for d_ in ("", ".d")],
)
def test_a_manager_file_or_folder_removed_since_pid_1_started_is_refused_as_unchecked(
    tmp_path: Path, where: str
) -> None:
    """review20b H1: only the files still there were asked their time, so after ``rm /etc/systemd/system.conf`` (or
    ``rm -r`` of a system.conf.d folder) whose ManagerEnvironment= PID 1 still holds, nothing was named. Removing a
    file changes its folder's time: the systemd folders are asked too."""
    conf = where if where.endswith(".conf") else f"{where}/m.conf"
    root = running_root(tmp_path / "r", {DROP_IN: "[Service]\nPassEnvironment=PEERSERVE_OPERATOR_CA\n",
                                         conf: "[Manager]\nManagerEnvironment=PEERSERVE_OPERATOR_CA=/x\n"})  # fmt: skip
    pid_1_starts_now(root)
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == [f"{conf}{PASSED}"]  # named while there
    (root / where).unlink() if where.endswith(".conf") else shutil.rmtree(root / where)
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == [f"{where.rsplit('/', 1)[0]}{CHANGED}"]


def test_a_manager_file_edited_keeping_its_old_mtime_or_through_a_link_is_refused_as_unchecked(tmp_path: Path) -> None:
    """review20b H2: the check compared mtimes, which cp -p, install -p, rsync -a, tar x and a dpkg conffile rename
    set back to before the boot, and of a link itself, not of the file it names. It asks the ctime (which nothing
    sets back) of the file a link names; a dangling link counts as changed."""
    target = tmp_path / "elsewhere/m.conf"
    target.parent.mkdir(parents=True)
    target.write_text("[Manager]\nManagerEnvironment=OTHER=1\n")
    keep = "etc/systemd/system.conf.d/keep.conf"
    root = running_root(tmp_path / "r", {DROP_IN: "[Service]\nPassEnvironment=PEERSERVE_OPERATOR_CA\n",
                                         keep: "[Manager]\n"})  # fmt: skip
    (root / MANAGER_CONF).symlink_to(target)
    pid_1_starts_now(root)
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == []
    target.write_text("[Manager]\nManagerEnvironment=OTHER=2\n")  # the link's folder and the link are unchanged
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == [f"{MANAGER_CONF}{CHANGED}"]
    target.unlink()
    (root / keep).write_text("[Manager]\nManagerEnvironment=OTHER=1\n")
    os.utime(root / keep, (999_500, 999_500))  # an mtime from before the boot, as cp -p leaves it
    dangling = CHANGED.replace("changed since the service manager started", "a dangling link")
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == [f"{keep}{CHANGED}", f"{MANAGER_CONF}{dangling}"]


def test_the_run_folder_itself_is_not_asked_its_time(tmp_path: Path) -> None:
    """PID 1 mounts /run after it starts and writes into /run/systemd all the time: its folder's time says nothing
    (asked, it would refuse on every running system, and no reboot would clear it). A system.conf there is newer
    than PID 1 whenever there is one, and is named so."""
    root = running_root(tmp_path, {"run/systemd/units/x": "", DROP_IN: "[Service]\nPassEnvironment=X\n"})
    pid_1_starts_now(root)
    (root / "run/systemd/notify").write_text("")
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == []
    (root / "run/systemd/system.conf").write_text("[Manager]\n")
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == [f"run/systemd/system.conf{CHANGED}"]


def test_a_manager_file_changed_since_pid_1_started_is_refused_as_unchecked(tmp_path: Path) -> None:
    """A ManagerEnvironment= taken out of a file stays in PID 1's environment (merged in, never unset) until it
    restarts, and nothing shows it (/proc/1/environ does not): a manager file or folder newer than PID 1's start,
    removed drop-ins included (the folder's time), makes PassEnvironment= naming the variable "cannot check". So do
    an unreadable /proc/1/environ and /proc/1/stat."""
    root = running_root(tmp_path, {MANAGER_CONF: "[Manager]\nManagerEnvironment=OTHER=1\n"})
    pid_1_starts_now(root)
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == []
    (root / MANAGER_CONF).unlink()  # the folder's time is now
    changed = ", and a ManagerEnvironment= taken out of it (or out of a file removed from it) stays in the manager's "
    changed += "environment until it restarts "
    changed += "(reboot), which PassEnvironment= passes to the agent: cannot check whether it"
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == [
        f"etc/systemd/system.conf.d: changed since the service manager started{changed}"
    ]
    assert running(root, tmp_path) == []  # nothing passes it on
    unread = ": this check failed to read it: cannot check whether it"
    (root / "proc/1/environ").unlink()
    (root / "proc/1/stat").unlink()
    assert running(root, tmp_path, "PEERSERVE_OPERATOR_CA") == [
        f"proc/1/environ (the environment the service manager started with){unread}",
        f"proc/1/stat (when the service manager started){unread}",
    ]


def efi_variable(text: str) -> bytes:
    """SystemdOptions as efivarfs gives it: 4 bytes of attributes, then the text in UTF-16LE and its NUL."""
    return b"\x07\x00\x00\x00" + text.encode("utf-16-le") + b"\x00\x00"


SYSTEMD_OPTIONS = "SystemdOptions-8cf2644b-4b0b-428f-9387-6d876050dc67"


@pytest.mark.parametrize(
    ("text", "named"),
    [("systemd.setenv=PEERSERVE_OPERATOR_CA=/x", True),
     ("quiet \u00e9\U0001f600 systemd.setenv=PEERSERVE_OPERATOR_CA=/x", True),
     ('systemd.setenv="PEERSERVE_OPERATOR_CA=/x y"', True), ("systemd.setenv=PEERSERVE_OPERATOR_CA=", False),
     ("quiet\0systemd.setenv=PEERSERVE_OPERATOR_CA=/x", False), ("PEERSERVE_OPERATOR_CA=/x", False)],
)  # fmt: skip
def test_systemds_efi_variable_systemdoptions_is_read(tmp_path: Path, text: str, named: bool) -> None:
    """tidy20: systemd reads its EFI variable SystemdOptions as more of its command line, systemd.setenv= included
    (which reaches every unit), and caches its text in /run/systemd/efivars for its later reads: both are read (the
    variable's text up to its first NUL, after the 4 bytes of attributes; a character past ASCII is no name's)."""
    root = make(tmp_path, {})
    efivars = root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    (efivars / SYSTEMD_OPTIONS).write_bytes(efi_variable(text))
    said = f"sys/firmware/efi/efivars/{SYSTEMD_OPTIONS} (systemd.setenv= in systemd's EFI variable SystemdOptions)"
    assert found(root) == ([said] if named else [])
    cache = make(tmp_path / "cache", {f"run/systemd/efivars/{SYSTEMD_OPTIONS}": text.split("\0")[0] + "\n"})
    said = (f"run/systemd/efivars/{SYSTEMD_OPTIONS} (systemd.setenv= in the manager's copy of systemd's EFI variable "
            "SystemdOptions)")  # fmt: skip
    assert found(cache) == ([said] if named else [])


@pytest.mark.parametrize("blank", ["\n", "\r", "\t", "\r\n"])
def test_systemdoptions_and_the_command_line_are_read_past_a_line_end(tmp_path: Path, blank: str) -> None:
    """review20b M1: the readers took the first line only, but systemd splits its command line and SystemdOptions at
    CR and LF as at any blank: a systemd.setenv= after one went unseen, in the EFI variable, its /run copy and
    /proc/cmdline alike."""
    text = f"quiet{blank}systemd.setenv=PEERSERVE_OPERATOR_CA=/x"
    root = make(tmp_path, {f"run/systemd/efivars/{SYSTEMD_OPTIONS}": text + "\n", "proc/cmdline": text + "\n"})
    efivars = root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    (efivars / SYSTEMD_OPTIONS).write_bytes(efi_variable(text))
    assert found(root) == [
        "proc/cmdline (systemd.setenv= on the kernel command line)",
        f"run/systemd/efivars/{SYSTEMD_OPTIONS} (systemd.setenv= in the manager's copy of systemd's EFI variable "
        "SystemdOptions)",
        f"sys/firmware/efi/efivars/{SYSTEMD_OPTIONS} (systemd.setenv= in systemd's EFI variable SystemdOptions)",
    ]


@pytest.mark.parametrize("over", [False, True])
def test_systemdoptions_past_64_kib_is_refused_as_unchecked(tmp_path: Path, over: bool) -> None:
    """review20b M2: the variable was read up to 64 KiB and the rest dropped silently, while systemd reads it whole:
    past 64 KiB (the variable's text, or its /run copy) it is "cannot check"; up to it, read to its end."""
    setenv = " systemd.setenv=PEERSERVE_OPERATOR_CA=/x"
    text = "q" * (32767 - len(setenv) + over) + setenv  # UTF-16 and its NUL: 65,536 bytes, or 2 more
    cache = ("q" * (65536 - len(setenv) + over) + setenv).encode()  # 65,536 bytes, or 1 more
    root = make(tmp_path, {})
    efivars = root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    (efivars / SYSTEMD_OPTIONS).write_bytes(efi_variable(text))
    (root / "run/systemd/efivars").mkdir(parents=True)
    (root / f"run/systemd/efivars/{SYSTEMD_OPTIONS}").write_bytes(cache)
    assert len(efi_variable(text)) == 65540 + 2 * over and len(cache) == 65536 + over
    efi, copy = "systemd's EFI variable SystemdOptions", "the manager's copy of systemd's EFI variable SystemdOptions"
    if over:
        expected = [f"sys/firmware/efi/efivars/{SYSTEMD_OPTIONS} ({efi}): over the 64 KiB this check reads: cannot "
                    "check whether it", f"run/systemd/efivars/{SYSTEMD_OPTIONS} ({copy}): over the 64 KiB this check "
                    "reads: cannot check whether it"]  # fmt: skip
    else:
        expected = [f"sys/firmware/efi/efivars/{SYSTEMD_OPTIONS} (systemd.setenv= in {efi})",
                    f"run/systemd/efivars/{SYSTEMD_OPTIONS} (systemd.setenv= in {copy})"]  # fmt: skip
    assert found(root) == sorted(expected)


@pytest.mark.parametrize("link", [False, True])
def test_an_environment_file_that_is_not_a_regular_file_is_refused_as_unchecked(tmp_path: Path, link: bool) -> None:
    """review20b L2: a FIFO as EnvironmentFile= (or a link to one) was passed over in silence, though systemd reads
    whatever a writer puts into it. Anything there that is not a regular file is "cannot check" (and not read: a FIFO
    would block)."""
    root = make(tmp_path, {DROP_IN: "[Service]\nEnvironmentFile=/etc/peerserve/*.env\n"})
    (root / "etc/peerserve").mkdir(parents=True)
    fifo = root / "etc/peerserve" / ("fifo" if link else "a.env")
    os.mkfifo(fifo)
    if link:
        (root / "etc/peerserve/a.env").symlink_to(fifo)
    assert found(root) == ["etc/peerserve/a.env: not a regular file, which this check does not read: cannot check "
                           "whether it"]  # fmt: skip


def test_an_efi_variable_that_cannot_be_read_is_refused_as_unchecked(tmp_path: Path) -> None:
    root = make(tmp_path, {})
    efivars = root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    (efivars / SYSTEMD_OPTIONS).mkdir()  # not a file: reading it fails
    assert found(root) == [f"sys/firmware/efi/efivars/{SYSTEMD_OPTIONS} (systemd's EFI variable SystemdOptions): "
                           "this check failed to read it: cannot check whether it"]  # fmt: skip


def test_control_characters_in_file_text_and_globbed_names_are_shown_as_question_marks(tmp_path: Path) -> None:
    """review19b F8: an EnvironmentFile= value in a "cannot check" line and a globbed file's name were printed as
    they are: an ESC (or the byte 0x9b, CSI to an 8-bit terminal) reached the terminal. Each is shown as '?'."""
    text = "[Service]\nEnvironmentFile=/etc/peerserve/*.env\nEnvironmentFile=/x\x1b]0;t\x07%N\n"
    root = make(tmp_path, {DROP_IN: text})
    (root / "etc/peerserve").mkdir(parents=True)
    (root / os.fsdecode(b"etc/peerserve/a\x1b[2Jb\x9b1m.env")).write_bytes(b"PEERSERVE_OPERATOR_CA=/x\n")
    out = run(str(root), "operator_ca_in_environment")
    assert out.splitlines() == [
        f"{root}/etc/peerserve/a?[2Jb?1m.env",
        f"{root}/{DROP_IN}: EnvironmentFile=/x?]0;t?%N, a specifier this check cannot expand: cannot check whether it",
    ]


@pytest.mark.parametrize(
    ("value", "named"),
    [("PEERSERVE_OPERATOR_CA=" + "x" * (1 << 20), True),
     ('"PEERSERVE_OPERATOR_CA=' + " " * (1 << 20) + '"', False),
     ('"PEERSERVE_OPERATOR_CA=' + " " * (1 << 20) + 'x"', True),
     ('"' + "A" * (1 << 20) + 'PEERSERVE_OPERATOR_CA=x"', False),
     ("PEERSERVE_OPERATOR_CA=" + "\\x41" * (1 << 18), True),
     ("A=1 " * (1 << 18) + "PEERSERVE_OPERATOR_CA=/x", True)],
)  # fmt: skip
def test_a_one_mib_value_is_read_whole(tmp_path: Path, value: str, named: bool) -> None:
    """tidy20: words() built each word one character at a time, every append copying the word so far: a 400 KB value
    took 6.4 s, a 1 MiB one 168 s (systemd takes lines up to 1 MiB), far past this test's 30 s. A word now keeps its
    first 512 characters and whether a character not blank was cut off after them, which is all a name and a blank
    value need: a value blank past the cut still counts as unset, and a name longer than the cut is not this one."""
    conf = "etc/systemd/system.conf.d/env.conf"
    root = make(
        tmp_path, {DROP_IN: f"[Service]\nEnvironment={value}\n", conf: f"[Manager]\nDefaultEnvironment={value}\n"}
    )
    assert found(root) == ([f"{conf} (DefaultEnvironment=)", DROP_IN] if named else [])


def test_a_long_word_is_shown_cut(tmp_path: Path) -> None:
    """A word shown in a "cannot check" line is its first 512 characters and "..." (it was the whole word)."""
    word = "PEERSERVE_%i" + "y" * 600 + "=z"
    assert found(make(tmp_path, {DROP_IN: f"[Service]\nEnvironment={word}\n"})) == [
        f"{DROP_IN}: Environment={word[:512]}..., a specifier this check cannot expand: cannot check whether it"
    ]


def test_a_long_continued_line_is_joined_whole(tmp_path: Path) -> None:
    """tidy20: a continued line was joined by appending each part to the line so far (100,000 parts: 5.4 s); the
    parts are now joined pairwise."""
    text = "[Service]\nEnvironment=A=1 \\\n" + "a \\\n" * 250_000 + " PEERSERVE_OPERATOR_CA=/x\n"
    assert found(make(tmp_path, {DROP_IN: text})) == [DROP_IN]


def test_a_glob_naming_more_files_than_the_check_reads_is_refused_as_unchecked(tmp_path: Path) -> None:
    """tidy20: an EnvironmentFile= glob was expanded and every file it named read, however many (/usr/*/*/* names
    thousands, each read at ~1 MiB/s): past 64 files none is read, and the line is "cannot check". 64 are read."""
    files = {f"etc/peerserve/env.d/{i:02}.env": "A=1\n" for i in range(64)}
    files["etc/peerserve/env.d/63.env"] = "PEERSERVE_OPERATOR_CA=/x\n"
    line = "EnvironmentFile=-/etc/peerserve/env.d/*.env"
    root = make(tmp_path, {DROP_IN: f"[Service]\n{line}\n", **files})
    assert found(root) == ["etc/peerserve/env.d/63.env"]
    (root / "etc/peerserve/env.d/64.env").write_text("A=1\n")
    assert found(root) == [f"{DROP_IN}: {line} names more than 64 files, more than this check reads: cannot check "
                           "whether it"]  # fmt: skip


@pytest.mark.parametrize("sizes", [[(1 << 20) + 1], [600_000, 600_000]])
def test_files_holding_more_than_a_mib_are_refused_as_unchecked(tmp_path: Path, sizes: list[int]) -> None:
    """tidy20: what one EnvironmentFile= line names is read up to 1 MiB together (a file or a glob's files): past
    it nothing is read, and the line is "cannot check"; 1 MiB exactly is read."""
    line = "EnvironmentFile=/etc/peerserve/big*.env"
    files = {f"etc/peerserve/big{i}.env": "#" * (n - 26) + "\nPEERSERVE_OPERATOR_CA=/x\n" for i, n in enumerate(sizes)}
    root = make(tmp_path, {DROP_IN: f"[Service]\n{line}\n", **files})
    assert found(root) == [f"{DROP_IN}: {line} names more than 1 MiB (its files together), more than this check "
                           "reads: cannot check whether it"]  # fmt: skip
    (root / "etc/peerserve/big0.env").write_text("#" * ((1 << 20) - 26) + "\nPEERSERVE_OPERATOR_CA=/x\n")
    (root / "etc/peerserve/big1.env").unlink(missing_ok=True)
    assert (root / "etc/peerserve/big0.env").stat().st_size == 1 << 20
    assert found(root) == ["etc/peerserve/big0.env"]


def test_a_glob_systemd_shows_is_capped_too(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(
        "#!/bin/bash\nif [ \"$1 $2 $3\" = 'show -p EnvironmentFiles' ]; then\n"
        "  echo '/etc/e/*.env (ignore_errors=yes)'\nfi\n"
    )
    (bin_dir / "systemctl").chmod(0o755)
    root = make(tmp_path / "root", {f"etc/e/{i}.env": "A=1\n" for i in range(65)})
    out = run(str(root), "operator_ca_in_environment", sd="running", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.splitlines() == [
        "the unit's EnvironmentFile=/etc/e/*.env (systemctl show -p EnvironmentFiles peerserve-agent.service) names "
        "more than 64 files, more than this check reads: cannot check whether it"
    ]
