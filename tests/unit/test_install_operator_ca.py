"""scripts/install.sh's operator-CA flags on an installed board, run for real as root in private mount and network
namespaces (no route out: nothing it runs reaches the network): overlays on /etc, /opt and /var keep every write (the
config, the CA key, the user, the unit) in the test's folder.
The board is already installed (the venv's python, the source digest and the solver's library in place), so the run
reaches the configuration step without pip, apt or the network; ``--no-start`` leaves systemd alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity import Identity, cluster_of
from agent.operator_ca import BoardCard, b64, raw_public, sign_revocations

REPO = Path(__file__).resolve().parents[2]
TOKEN = "install-flags-cluster-token-0123456789"
LAYERS = ("etc", "opt", "var")


def _can_overlay(tmp: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    (tmp / "up").mkdir(parents=True)
    (tmp / "work").mkdir()
    probe = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp}/up,workdir={tmp}/work /etc"
    return subprocess.run(["unshare", "-m", "-n", "--propagation", "private", "sh", "-c", probe],
                          capture_output=True).returncode == 0  # fmt: skip


def _host_is_bare() -> str | None:
    """Why this host cannot stand in for a board already installed (None: it can). /usr is not overlaid: without
    python3's ensurepip and venv, install.sh would install them with apt on the host's /usr; an installed board
    (/opt/peerserve) cannot take the fixture's venv in its lower layer."""
    if Path("/opt/peerserve").exists():
        return "/opt/peerserve exists on this host (an installed board): the fixture would write into its lower layer"
    if subprocess.run(["python3", "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        return "python3 here lacks ensurepip/venv: install.sh would apt-get them into the host's /usr"
    return None


class Board:
    """A board's /etc, /opt and /var as overlays whose upper layers live under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for layer in LAYERS:
            (root / layer / "up").mkdir(parents=True)
            (root / layer / "work").mkdir()

    def sh(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        mounts = "".join(
            f"mount -t overlay overlay -o lowerdir=/{d},upperdir={self.root}/{d}/up,workdir={self.root}/{d}/work /{d}\n"
            for d in LAYERS
        )
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PIP_NO_INDEX": "1",
               "LC_ALL": "C"}  # fmt: skip
        return subprocess.run(["unshare", "-m", "-n", "--propagation", "private", "bash", "-c",
                               f"set -e\n{mounts}{script}"],
                              capture_output=True, text=True, timeout=timeout, env=env)  # fmt: skip

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sh(f"bash {REPO}/scripts/install.sh --no-start --runtime process " + " ".join(args))

    def file(self, path: str) -> Path:
        """Where the board's ``path`` (under /etc, /opt or /var) lies after the runs."""
        layer, rest = path.lstrip("/").split("/", 1)
        return self.root / layer / "up" / rest


@pytest.fixture
def board(tmp_path: Path) -> Board:
    if not _can_overlay(tmp_path / "probe"):
        if os.environ.get("PEERSERVE_REQUIRE_DOCKER") == "1":
            pytest.fail("the install flag tests need root and overlay mounts in a mount namespace")
        pytest.skip("needs root and overlay mounts in a mount namespace")
    host_is_ready = _host_is_bare()
    if host_is_ready is not None:  # not a failure even in strict mode: the host itself decides, not the sandbox
        pytest.skip(host_is_ready)
    b = Board(tmp_path / "board")
    # installed already: what steps 1-2 leave (the digest as install.sh computes it, from its own function)
    ready = b.sh(f"""source_dir={REPO}
source <(sed -n -e '/^package_dirs=/p' -e '/^source_digest() {{/,/^}}/p' {REPO}/scripts/install.sh)
mkdir -p /opt/peerserve/venv/bin /opt/peerserve/venv/share/pyomo/lib
ln -s "$(command -v python3)" /opt/peerserve/venv/bin/python
touch /opt/peerserve/venv/share/pyomo/lib/libpynumero_ASL.so
source_digest > /opt/peerserve/source.sha256
""")
    assert ready.returncode == 0, ready.stderr
    first = b.install("--node-id", "b1", "--token", TOKEN)
    assert first.returncode == 0, first.stdout + first.stderr
    return b


def _card(tmp_path: Path, board: Board) -> tuple[Path, Path]:
    """(ca.pub, board.card) of an operator CA for this board's key; the card put where --board-card installs it."""
    ca = Ed25519PrivateKey.generate()
    data = tmp_path / "data"
    key = Identity("b1", TOKEN, data).key
    card = BoardCard.issue(ca, "b1", raw_public(key.public_key()), int(time.time()) + 86400,
                           cluster=bytes.fromhex(cluster_of(TOKEN)))  # fmt: skip
    (tmp_path / "ca.pub").write_text(b64(raw_public(ca.public_key())) + "\n")
    (tmp_path / "b1.card").write_text(json.dumps(card.to_json()))
    (tmp_path / "revoked.json").write_text(json.dumps(sign_revocations(ca, 1, [])))
    peer = "/var/lib/peerserve/peer"
    put = board.sh(f"install -d -m 700 {peer} && cp {tmp_path / 'b1.card'} {peer}/board.card && "
                   f"cp {tmp_path / 'revoked.json'} {peer}/")  # fmt: skip
    assert put.returncode == 0, put.stderr
    return tmp_path / "ca.pub", tmp_path / "b1.card"


def test_no_operator_ca_switches_the_mode_off_and_keeps_the_card(tmp_path: Path, board: Board) -> None:
    pub, _ = _card(tmp_path, board)
    config, ca_file = board.file("/etc/peerserve/peerserve.toml"), board.file("/etc/peerserve/operator-ca.pub")
    on = board.install("--operator-ca", str(pub))
    assert on.returncode == 0, on.stdout + on.stderr
    assert 'operator_ca = "/etc/peerserve/operator-ca.pub"' in config.read_text() and ca_file.exists()
    dry = board.install("--no-operator-ca", "--dry-run")
    assert dry.returncode == 0 and "would run: rm -f /etc/peerserve/operator-ca.pub" in dry.stdout, dry.stdout
    assert "operator_ca" in config.read_text() and ca_file.exists()  # a dry run changes nothing
    off = board.install("--no-operator-ca")
    assert off.returncode == 0, off.stdout + off.stderr
    assert "operator_ca" not in config.read_text() and not ca_file.exists()
    assert f'cluster_token = "{TOKEN}"' in config.read_text() and 'node_id = "b1"' in config.read_text()
    assert "operator CA mode off" in off.stdout and "board.card revoked.json" in off.stdout  # says what it kept
    assert board.file("/var/lib/peerserve/peer/board.card").exists()
    again = board.install("--no-operator-ca")  # idempotent: nothing to change
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout + again.stderr
    assert "operator_ca" not in config.read_text() and not ca_file.exists()
    back = board.install("--operator-ca", str(pub))  # and on again with the card it kept
    assert back.returncode == 0 and "operator_ca" in config.read_text() and ca_file.exists()


def test_no_operator_ca_on_a_board_without_the_mode_changes_nothing(board: Board) -> None:
    before = board.file("/etc/peerserve/peerserve.toml").read_text()
    off = board.install("--no-operator-ca")
    assert off.returncode == 0 and "nothing to change" in off.stdout, off.stdout + off.stderr
    assert board.file("/etc/peerserve/peerserve.toml").read_text() == before


@pytest.mark.parametrize("other", [["--operator-ca", "/dev/null"], ["--board-card", "/dev/null"]])
def test_no_operator_ca_refuses_the_flags_that_switch_it_on(board: Board, other: list[str]) -> None:
    both = board.install("--no-operator-ca", *other)
    assert both.returncode == 1 and "without --operator-ca and --board-card" in both.stderr


def test_operator_ca_flags_still_check_their_files(tmp_path: Path, board: Board) -> None:
    (tmp_path / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n")
    wrong = board.install("--operator-ca", str(tmp_path / "ca.key"))
    assert wrong.returncode == 1 and "not an Ed25519 public key" in wrong.stderr
    pub, _ = _card(tmp_path, board)
    board.sh("rm /var/lib/peerserve/peer/board.card")
    no_card = board.install("--operator-ca", str(pub))
    assert no_card.returncode == 1 and "needs this board's card" in no_card.stderr
    assert "operator_ca" not in board.file("/etc/peerserve/peerserve.toml").read_text()


def test_no_operator_ca_never_leaves_a_config_naming_a_removed_ca_file(tmp_path: Path, board: Board) -> None:
    """review16d F5: the CA file was removed before the config was rewritten; when that write failed (disk full, a
    read-only /etc) the config still named the missing file and the agent refused to start. Here the write fails
    on a directory where its temporary file goes."""
    pub, _ = _card(tmp_path, board)
    config, ca_file = board.file("/etc/peerserve/peerserve.toml"), board.file("/etc/peerserve/operator-ca.pub")
    assert board.install("--operator-ca", str(pub)).returncode == 0
    assert board.sh("mkdir /etc/peerserve/peerserve.toml.tmp").returncode == 0
    failed = board.install("--no-operator-ca")
    assert failed.returncode != 0, failed.stdout + failed.stderr
    assert 'operator_ca = "/etc/peerserve/operator-ca.pub"' in config.read_text() and ca_file.exists()
    assert board.sh("rmdir /etc/peerserve/peerserve.toml.tmp").returncode == 0
    off = board.install("--no-operator-ca")  # the retry completes the switch
    assert off.returncode == 0, off.stdout + off.stderr
    assert "operator_ca" not in config.read_text() and not ca_file.exists()


def test_no_operator_ca_refuses_while_an_environment_setting_keeps_the_mode_on(tmp_path: Path, board: Board) -> None:
    """tidy18, review18a F3: PEERSERVE_OPERATOR_CA in a drop-in (Environment=, or a file its EnvironmentFile= reads)
    overrides the config: --no-operator-ca used to warn, remove the CA file and exit 0, and the agent then refused
    every start. It now refuses before changing anything, naming each such file (an empty setting and another
    unit's drop-in are not named), so the board keeps running in the mode; --operator-ca warns of them."""
    pub, _ = _card(tmp_path, board)
    assert board.install("--operator-ca", str(pub)).returncode == 0
    config, ca_file = board.file("/etc/peerserve/peerserve.toml"), board.file("/etc/peerserve/operator-ca.pub")
    before = config.read_text()
    drop_ins = "/etc/systemd/system/peerserve-agent.service.d"
    made = board.sh(f"""install -d {drop_ins} /etc/systemd/system/other.service.d /etc/default
printf '[Service]\\nEnvironment = "PEERSERVE_OPERATOR_CA=/etc/peerserve/operator-ca.pub" "X=1"\\n' > {drop_ins}/ca.conf
printf '[Service]\\nEnvironmentFile = -/etc/default/ps-env\\nEnvironment=PEERSERVE_OPERATOR_CA=\\n' > {drop_ins}/b.conf
printf 'export PEERSERVE_OPERATOR_CA = /etc/peerserve/operator-ca.pub\\n' > /etc/default/ps-env
printf '[Service]\\nEnvironment=PEERSERVE_OPERATOR_CA=/x.pub\\n' > /etc/systemd/system/other.service.d/ca.conf
""")
    assert made.returncode == 0, made.stderr
    for args in (["--no-operator-ca"], ["--no-operator-ca", "--dry-run"]):
        off = board.install(*args)
        assert off.returncode == 1, off.stdout + off.stderr
        named = [line.split()[1] for line in off.stderr.splitlines() if line.endswith("sets PEERSERVE_OPERATOR_CA")]
        assert named == ["/etc/default/ps-env", f"{drop_ins}/ca.conf"], off.stderr
        assert "--no-operator-ca changed nothing" in off.stderr and "would run" not in off.stdout
        assert config.read_text() == before and ca_file.exists()  # still on, as the agent runs it
    on = board.install("--operator-ca", str(pub))
    assert on.returncode == 0, on.stdout + on.stderr
    warned = [line.split()[2] for line in on.stderr.splitlines() if line.startswith("install.sh: warning:")]
    assert warned == ["/etc/default/ps-env", f"{drop_ins}/ca.conf"], on.stderr
    assert board.sh(f"rm {drop_ins}/ca.conf /etc/default/ps-env").returncode == 0
    quiet = board.install("--no-operator-ca")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stdout + quiet.stderr
    assert "operator_ca" not in config.read_text() and not ca_file.exists()
