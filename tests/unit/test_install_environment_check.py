"""scripts/install.sh's read of where the agent's unit gets PEERSERVE_OPERATOR_CA (which the agent takes over the
config), offline: the unit files' drop-ins and the files their EnvironmentFile= lines read, in every form systemd
accepts (systemd.syntax(7), systemd.unit(5), systemd.exec(5)). review18a F2: the check stayed silent on spaces around
"=", a continued line, prefix drop-ins, /usr/local/lib, EnvironmentFile= with spaces, a specifier or a glob, and
``KEY = value`` in the file. Run over a fake root (``unit_root``); systemd's own word (systemctl show) needs a booted
system and is not run here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/install.sh"
FUNCTIONS = ("unit_lines", "section_settings", "environment_value_sets_it", "environment_files", "globbed_files",
             "environment_file_sets_it", "environment_file_named", "operator_ca_in_unit_files",
             "operator_ca_in_manager", "operator_ca_in_environment")  # fmt: skip
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


PASSES = (
    ": PassEnvironment= names PEERSERVE_OPERATOR_CA, which takes it from the service manager's own environment "
    "(ManagerEnvironment=, or what systemd was started with) that this check cannot read: cannot check whether it"
)


@pytest.mark.parametrize(
    ("line", "said"),
    [("PassEnvironment=PEERSERVE_OPERATOR_CA", PASSES), ('PassEnvironment=A "PEERSERVE_"OPERATOR_CA B', PASSES),
     ("PassEnvironment = \\x50EERSERVE_OPERATOR_CA", PASSES),
     ("PassEnvironment=PEERSERVE_%i", ": PassEnvironment=PEERSERVE_%i, a specifier this check cannot expand: cannot "
      "check whether it"),
     ("PassEnvironment=PEERSERVE_OPERATOR_CAX OTHER_%i PEERSERVE_OPERATOR_CA=/x", None)],
)  # fmt: skip
def test_passenvironment_naming_the_variable_is_refused_as_unchecked(
    tmp_path: Path, line: str, said: str | None
) -> None:
    """review19b F7: ``PassEnvironment=PEERSERVE_OPERATOR_CA`` with ``[Manager] ManagerEnvironment=`` in a
    system.conf.d file gives the agent the variable; offline nothing read PassEnvironment=, online /proc/1/environ
    shows only what PID 1 started with. Naming the variable (in any form systemd reads) is now "cannot check"."""
    conf = "etc/systemd/system.conf.d/m.conf"
    root = make(
        tmp_path, {DROP_IN: f"[Service]\n{line}\n", conf: "[Manager]\nManagerEnvironment=PEERSERVE_OPERATOR_CA=/x\n"}
    )
    assert found(root) == ([f"{DROP_IN}{said}"] if said else [])


def test_passenvironment_shown_by_systemd_is_refused_as_unchecked(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(
        "#!/bin/bash\nif [ \"$1 $2 $3\" = 'show -p PassEnvironment' ]; then echo 'A PEERSERVE_OPERATOR_CA'; fi\n"
    )
    systemctl.chmod(0o755)
    out = run(str(make(tmp_path / "root", {})), "operator_ca_in_environment", sd="running",
              env={"PATH": f"{bin_dir}:/usr/bin:/bin"})  # fmt: skip
    assert out.splitlines() == [
        "the unit's PassEnvironment= (systemctl show -p PassEnvironment peerserve-agent.service), which takes "
        "PEERSERVE_OPERATOR_CA from the service manager's own environment that this check cannot read: cannot check "
        "whether it"
    ]


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
