"""Byte-compile the running interpreter's site-packages on every core (scripts/install.sh on a board, after
``pip install --no-compile``; scripts/bootstrap.sh for the development venv).

pip compiles what it installs one file after another (~29 of a board's first install's ~37 s of pip CPU on the 2-core
test machine); compileall's process pool takes every core and skips what is compiled already (an upgrade compiles
what it changed). A file that does not compile is skipped, as pip skips it (a package's Python 2 test data); with no
process pool here (no /dev/shm in an image's chroot), one file after another, as pip did."""

import compileall
import sysconfig

site = sysconfig.get_path("purelib")
try:
    compileall.compile_dir(site, quiet=2, workers=0)
except Exception:
    compileall.compile_dir(site, quiet=2, workers=1)
