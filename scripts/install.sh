#!/usr/bin/env bash
# Install the peerserve agent on this board (a Jetson with JetPack 5/6, or any Debian/Ubuntu host), as root.
#
#   install.sh [--token TOKEN | --token-file FILE] [--node-id ID] [--interface IFACE] [--runtime docker|process]
#              [--catalogue FILE] [--source DIR] [--wheelhouse DIR] [--no-start] [--dry-run]
#              [--card-request FILE] [--operator-ca FILE --board-card FILE | --no-operator-ca]
#   install.sh --download-wheels DIR
#   install.sh --uninstall [--purge]
#
# What it does (idempotent: a second run changes nothing and restarts nothing):
#   1. checks prerequisites and names what is missing: Python >= 3.10 with venv, Docker Engine (runtime
#      docker), the NVIDIA container runtime (on a Jetson), the solver's build tools when offline;
#   2. installs peerserve with its solver stack into /opt/peerserve/venv (scripts/install-solver.sh builds
#      Ipopt's PyNumero extension against Debian's ASL); from PyPI, or offline from --wheelhouse;
#   3. creates the system user peerserve (in the docker group for runtime docker), writes
#      /etc/peerserve/peerserve.toml (root:peerserve, mode 640: it holds the cluster token) and a copy of
#      the example catalogue; the first node generates the token and prints it: pass it to the others;
#   4. installs the hardened systemd unit peerserve-agent.service and enables it: on a running system it
#      (re)starts the agent once if anything changed; in a chroot or image build it starts at first boot.
#
# Options:
#   --token TOKEN        the cluster token (>= 16 characters) printed by the first node's install; giving a
#                        new one to a running board rotates it (see docs/operator-guide.md)
#   --token-file FILE    read the token from FILE ('-': standard input), keeping it out of ps and history
#   --node-id ID         this node's id, one DNS label (default: the short host name)
#   --interface IFACE    interface name (eth0) or address for mDNS and the API (default: the default
#                        route's; in a chroot: all); a name is resolved by the agent at each start
#   --runtime R          docker (default on a Jetson or wherever Docker runs) or process
#   --catalogue FILE     model catalogue to install (default: the built-in example)
#   --source DIR         the peerserve source tree to install (default: this script's repository)
#   --wheelhouse DIR     install Python packages only from DIR (offline; fill it with --download-wheels)
#   --download-wheels DIR  on a machine with network (same CPU architecture and Python as the boards):
#                        put every wheel the install needs into DIR, then exit
#   --card-request FILE  opt-in operator CA, step 1: write this board's signing request (node id + node key)
#                        to FILE for the operator ('peerserve ca sign --ca DIR FILE' on the operator's machine)
#   --operator-ca FILE   opt-in operator CA, step 2: the CA's public key (ca.pub from 'peerserve ca init'); the
#                        agent then admits only peers with a board card it signed (docs/security.md)
#   --board-card FILE    with --operator-ca: this board's signed card, checked (the CA's signature, the node id,
#                        this board's key, expiry) and installed
#                        as DATA_DIR/peer/board.card (required unless one is installed already)
#   --no-operator-ca     switch the operator CA mode off on this board: removes the operator_ca setting and
#                        /etc/peerserve/operator-ca.pub; keeps DATA_DIR/peer's card files (board.card, revoked.json
#                        and their records) for a later --operator-ca; the token alone admits again. It refuses,
#                        changing nothing, while the unit's environment sets PEERSERVE_OPERATOR_CA (a drop-in's
#                        Environment= or EnvironmentFile=): that keeps the mode on over the config
#   --no-start           write everything but start and enable nothing
#   --dry-run            print what would be done, change nothing
#   --uninstall          stop and disable the service, remove it and /opt/peerserve; keeps config and data
#   --purge              with --uninstall: also remove /etc/peerserve, /var/lib/peerserve and the user
set -eEuo pipefail
trap 'echo "install.sh: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

prefix=/opt/peerserve
etc=/etc/peerserve
data=/var/lib/peerserve
service=peerserve-agent.service
unit=/etc/systemd/system/$service
user=peerserve
source_dir=$(cd "$(dirname "$0")/.." && pwd)
card_request="" operator_ca="" board_card="" no_operator_ca=0
token="" token_file="" node_id="" interface="" runtime="" catalogue="" wheelhouse="" download=""
no_start=0 dry_run=0 uninstall=0 purge=0
changed=0

usage() { sed -n '2,/^set -eEuo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --token) token="${2:?--token needs a value}"; shift 2 ;;
    --token-file) token_file="${2:?--token-file needs a file}"; shift 2 ;;
    --node-id) node_id="${2:?--node-id needs a value}"; shift 2 ;;
    --interface) interface="${2:?--interface needs a value}"; shift 2 ;;
    --runtime) runtime="${2:?--runtime needs a value}"; shift 2 ;;
    --catalogue) catalogue="${2:?--catalogue needs a value}"; shift 2 ;;
    --source) source_dir="${2:?--source needs a value}"; shift 2 ;;
    --wheelhouse) wheelhouse="${2:?--wheelhouse needs a directory}"; shift 2 ;;
    --download-wheels) download="${2:?--download-wheels needs a directory}"; shift 2 ;;
    --card-request) card_request="${2:?--card-request needs a file}"; shift 2 ;;
    --operator-ca) operator_ca="${2:?--operator-ca needs a file}"; shift 2 ;;
    --board-card) board_card="${2:?--board-card needs a file}"; shift 2 ;;
    --no-operator-ca) no_operator_ca=1; shift ;;
    --no-start) no_start=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

if [ "$no_operator_ca" = 1 ] && { [ -n "$operator_ca" ] || [ -n "$board_card" ]; }; then
  die "--no-operator-ca switches the operator CA mode off: give it without --operator-ca and --board-card"
fi

# Run a command, or print it under --dry-run; every change goes through here.
act() {
  changed=1
  if [ "$dry_run" = 1 ]; then
    echo "would run: $*"
  else
    "$@" || die "failed (exit $?): $*"
  fi
}

# Write a file only when its content differs (owner and mode applied either way). Sets file_changed.
put_file() {
  local path=$1 mode=$2 owner=$3 content=$4
  file_changed=0
  if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
    [ "$(stat -c %a "$path")" = "$mode" ] || act chmod "$mode" "$path"
    [ "$(stat -c %U:%G "$path")" = "$owner" ] || act chown "$owner" "$path"
    return 0
  fi
  changed=1 file_changed=1
  if [ "$dry_run" = 1 ]; then
    echo "would write $path (owner $owner, mode $mode)"
    return 0
  fi
  install -d -m 755 "$(dirname "$path")"
  (umask 077 && printf '%s\n' "$content" > "$path.tmp")
  chmod "$mode" "$path.tmp"
  chown "$owner" "$path.tmp"
  mv "$path.tmp" "$path"
}

# running: this system booted with systemd; offline: systemctl works on files only (chroot, image build).
systemd_state() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then echo running
  elif command -v systemctl >/dev/null; then echo offline
  else echo none; fi
}

is_jetson() { [ -f /etc/nv_tegra_release ] || grep -qi jetson /proc/device-tree/model 2>/dev/null; }

is_address() { python3 -c 'import ipaddress, sys; ipaddress.ip_address(sys.argv[1])' "$1" 2>/dev/null; }

# What the wheel is built from: pyproject.toml's packages (with their package data) and the readme.
package_dirs=(peerserve agent coordinator_election solver client)

# A digest of the files pip installs (every file of the packages: code and package data, the cluster page's
# scripts and styles too): a newer checkout with the same version still upgrades.
source_digest() {
  (cd "$source_dir" && find pyproject.toml "${package_dirs[@]}" -type f -not -path '*/__pycache__/*' \
     -not -name '*.pyc' -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
}

# Install peerserve with its extras from a clean copy of the source, in one pip run. pip reinstalls a local
# directory whatever the installed version (a newer checkout with the same version upgrades), but it builds in the
# tree it is given, and setuptools' build/lib there keeps an earlier build's copy of a file whose new version is
# not newer (a checkout copied with its times kept) and of a file since removed, which the new wheel then holds
# (it would also leave root's build/ and *.egg-info in the operator's checkout): the copy has none.
install_stage=""  # install_peerserve's temporary copy while it lives: the EXIT trap removes it
install_peerserve() {
  local rc=0
  changed=1
  if [ "$dry_run" = 1 ]; then
    echo "would run: $prefix/venv/bin/python -m pip install ${source_dir}[solver,agent] (from a clean copy)"
    return 0
  fi
  # removed on any exit: a failure, or SIGHUP (the ssh session dropped) or SIGTERM during pip, which used to leave
  # each copy in /tmp (review18a F5); the signals exit through the EXIT trap
  trap 'rm -rf "$install_stage"' EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
  install_stage=$(mktemp -d)
  (cd "$source_dir" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md \
     "${package_dirs[@]}") | tar -xf - -C "$install_stage" || rc=$?
  if [ "$rc" = 0 ]; then
    "$prefix/venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile \
      "${install_stage}[solver,agent]" || rc=$?
  fi
  rm -rf "$install_stage"
  install_stage=""
  [ "$rc" = 0 ] || die "failed (exit $rc): installing peerserve from $source_dir (pip install of a copy of it)"
  compile_venv
}

# Byte-compile the venv's packages on every core (scripts/compile_venv.py). The agent's user cannot write the venv, so
# a module without its .pyc would be compiled in memory at every start (pyomo's and scipy's thousands: seconds on a
# board).
compile_venv() {
  "$prefix/venv/bin/python" "$source_dir/scripts/compile_venv.py"
}

# The digest reads regular files and tar copies links as links, which the build then follows: a symlinked module's
# target could change with no reinstall, and the build copied a root-only target world-readable (review18a F6).
# A source tree with links is refused: copy it with the links resolved (cp -rL) or replace them with files.
refuse_source_links() {
  local links
  links=$(cd "$source_dir" && find pyproject.toml README.md "${package_dirs[@]}" -type l -print 2>/dev/null \
            | head -n 5 | tr '\n' ' ')
  [ -z "$links" ] || die "the source tree $source_dir holds symbolic links (${links% }): install from a copy \
without them (cp -rL), so what is installed is what the digest read"
}

# Where systemd reads units and drop-ins (systemd.unit(5)), and the manager's configuration; unit_root prefixes
# every path read offline (a test's fake root).
unit_root=""
unit_dirs=(/etc/systemd/system /run/systemd/system /usr/local/lib/systemd/system /usr/lib/systemd/system
  /lib/systemd/system)
operator_ca_var=PEERSERVE_OPERATOR_CA
# What one EnvironmentFile= line may have this check read: a glob that names more files, or files that hold more bytes
# together, is not read at all but named "cannot check" (systemd reads each file up to 64 MiB; this reads ~1 MiB/s,
# and a glob such as /usr/*/*/* names thousands).
env_files_max=64 env_bytes_max=$((1 << 20))
# An assignment that gives the variable a value (an empty one counts as unset, in the agent too: agent/settings.py).
set_it="(^|[[:space:]\"'])${operator_ca_var}[[:space:]]*=[[:space:]]*([\"'][[:space:]]*)?[^[:space:]\"'#]"

# A unit or manager configuration file's lines as systemd's read_line() splits them (src/basic/fileio.c), one "\n"
# a line: a line ends at "\n", "\r", "\r\n" or "\n\r", each optionally followed by a NUL, or at a NUL alone
# ("\r\r" and "\n\n" end two lines). awk alone split only at "\n": a drop-in written "[Service]\rEnvironment=..." was
# one line to it (review18e F-A). GNU sed -z reads NUL-ended records; its alternation takes the longest match.
unit_lines() {
  LC_ALL=C sed -z 's/\r\n\|\n\r\|\r\|\n/\n/g; /\n$/!s/$/\n/' -- "$1" | tr -d '\000'
}

# The settings of SECTION in a unit or manager file, one "KEY<TAB>value" a line, read as systemd's conf-parser does
# (src/shared/conf-parser.c, systemd.syntax(7)): '#' and ';' lines skipped (after spaces and tabs only), inside a
# continued line too (before it is joined); the first UTF-8 BOM that starts a line dropped; a line continues when it
# ends in an odd number of backslashes (an even number is escaped ones), an empty line ends it, and a continued line
# at the end of the file still counts; spaces and tabs around the key and the value stripped; "Environment=" alone
# (which resets the list) prints KEY with an empty value (review18d F2). Byte by byte (LC_ALL=C): the BOM is three.
# A continued line's parts are joined pairwise (join()): appending each to the line so far took 5.4 s for 100,000
# continuations (400 KB; systemd joins up to 1 MiB).
section_settings() {
  unit_lines "$1" | LC_ALL=C awk -v want="[$2]" 'function join(   i, m, l) {
      while (np > 1) {
        m = 0
        for (i = 1; i <= np; i += 2) Q[++m] = i < np ? P[i] P[i + 1] : P[i]
        for (i = 1; i <= m; i++) P[i] = Q[i]
        np = m }
      l = np ? P[1] : ""; np = 0
      return l }
    function rtrim(s, set,   e) {  # not sub(/[ \t]+$/): that tries each blank of a run, quadratic in a long one
      e = length(s)
      while (e > 0 && index(set, substr(s, e, 1))) e--
      return substr(s, 1, e) }
    function setting(l,   i, key) {
      sub(/^[ \t]+/, "", l); l = rtrim(l, " \t")
      if (substr(l, 1, 1) == "[") { sec = l; gsub(/[[:space:]]/, "", sec); return }
      i = index(l, "=")
      if (sec != want || i < 2) return
      key = rtrim(substr(l, 1, i - 1), " \t\n\v\f\r"); sub(/^[[:space:]]+/, "", key)
      l = substr(l, i + 1); sub(/^[ \t]+/, "", l)
      print key "\t" l }
    /^[ \t]*[#;]/ { next }
    !bom && sub(/^\357\273\277/, "") { bom = 1 }
    { n = 0; while (n < length($0) && substr($0, length($0) - n, 1) == "\\") n++ }
    n % 2 == 1 { P[++np] = substr($0, 1, length($0) - 1) " "; pending = 1; next }
    { P[++np] = $0; pending = 0; setting(join()) }
    END { if (pending) setting(join()) }'
}

# systemd's extract_first_word() (src/basic/extract-word.c) in awk, for words(): W[1..n] the words of s, split at
# spaces, tabs, CR and LF outside quotes; a quote (" or ') anywhere in a word is removed with its match, and quoted
# text keeps its separators. flags: "c" decodes C escapes (cunescape_one: \a \b \f \n \r \t \v \\ \" \' \s, \xHH,
# \NNN octal, \uHHHH, \UHHHHHHHH; NUL and an unknown escape are errors); without "c" a backslash is dropped and the
# next character kept, with "k" it is an ordinary character; "r" (EXTRACT_RELAX) ends an unclosed quote or a trailing
# backslash at the end; "d" reads as the kernel's next_arg() (lib/cmdline.c): only a double quote is a quote, kept in
# the word (kgives() reads it), a single quote is an ordinary character, and vertical tab and form feed separate too.
# An error ends the words there (ERR=1): systemd applies the words before it.
# Linear in s: a word keeps its first 512 characters (WT[k] = 1 when it had more), and WC[k] = 1 when a character
# not blank was cut off after them. Only a word's name (the variable's is 21 characters) and whether its value is
# blank are asked of it, and both are known from that (gives()); a word built one character at a time, each append
# copying the word so far, made a 400 KB value take 6.4 s and a 1 MiB one (systemd takes lines that long) 168 s.
extract_words_awk='
function hexv(c) { return index("0123456789abcdef", tolower(c)) - 1 }
function hexs(s, i, k,   v, d, j) {
  v = 0
  for (j = 0; j < k; j++) { d = hexv(substr(s, i + j, 1)); if (d < 0 || substr(s, i + j, 1) == "") return -1; v = v * 16 + d }
  return v }
function unesc(s, i,   c, v, a, b, d) {
  c = substr(s, i, 1); ELEN = 1
  if (c == "a") { ESC = "\007"; return 1 }
  if (c == "b") { ESC = "\010"; return 1 }
  if (c == "f") { ESC = "\014"; return 1 }
  if (c == "n") { ESC = "\n"; return 1 }
  if (c == "r") { ESC = "\r"; return 1 }
  if (c == "t") { ESC = "\t"; return 1 }
  if (c == "v") { ESC = "\013"; return 1 }
  if (c == "s") { ESC = " "; return 1 }
  if (c == "\\" || c == "\"" || c == "\047") { ESC = c; return 1 }
  if (c == "x" || c == "u" || c == "U") {
    ELEN = c == "x" ? 3 : c == "u" ? 5 : 9
    v = hexs(s, i + 1, ELEN - 1)
    if (v <= 0 || (c == "U" && (v > 1114111 || (v >= 55296 && v <= 57343)))) return 0
    ESC = c == "x" || v < 128 ? sprintf("%c", v) : "\377"  # a code point past ASCII: a byte no name holds
    return 1 }
  a = index("01234567", c) - 1; b = index("01234567", substr(s, i + 1, 1)) - 1
  d = index("01234567", substr(s, i + 2, 1)) - 1
  if (c == "" || a < 0 || b < 0 || d < 0 || substr(s, i + 1, 1) == "" || substr(s, i + 2, 1) == "") return 0
  v = a * 64 + b * 8 + d
  if (v == 0 || v > 255) return 0
  ESC = sprintf("%c", v); ELEN = 3
  return 1 }
function put(c) { if (WL < 512) { WW = WW c; WL++ } else { WD = 1; if (c ~ /[^[:space:]]/) WX = 1 } }
function word(n) { W[n] = WW; WT[n] = WD; WC[n] = WX; return n }
function words(s, flags,   n, i, L, c, q, sep) {
  n = 0; i = 1; L = length(s); ERR = 0; sep = flags ~ /d/ ? " \t\r\n\v\f" : " \t\r\n"
  for (;;) {
    while (i <= L && index(sep, substr(s, i, 1))) i++
    if (i > L) return n
    WW = ""; WL = WD = WX = 0; q = ""
    for (;;) {
      if (i > L) { if (q != "" && flags !~ /r/) { ERR = 1; return n }; return word(n + 1) }
      c = substr(s, i, 1)
      if (c == "\\" && flags !~ /k/) {
        if (i == L) { if (flags ~ /r/) return word(n + 1); ERR = 1; return n }
        if (flags ~ /c/) { if (!unesc(s, i + 1)) { ERR = 1; return n }; put(ESC); i += 1 + ELEN }
        else { put(substr(s, i + 1, 1)); i += 2 }
        continue }
      if (flags ~ /d/ && c == "\"") { q = q == "" ? c : ""; put(c); i++; continue }
      if (q != "") { if (c == q) q = ""; else put(c); i++; continue }
      if (flags !~ /d/ && (c == "\"" || c == "\047")) { q = c; i++; continue }
      if (index(sep, c)) { n = word(n + 1); break }
      put(c); i++ } } }
# Whether word w, an assignment, gives variable v a value (an empty or blank one counts as unset, in the agent too);
# cut: a character not blank was cut off the end of the word (WC[k]).
function gives(w, v, cut,   i) {
  i = index(w, "=")
  return i && substr(w, 1, i - 1) == v && (cut || substr(w, i + 1) ~ /[^[:space:]]/) }
# gives() for a word read with "d", as the kernel hands it to PID 1: the value without one double quote at its start
# and one at its end (next_arg() takes off no more); the name with every double quote taken out (the kernel keeps
# them, so such a name is never the variable: reading it so errs towards "set").
function kgives(w, v, cut,   i, name, val) {
  i = index(w, "="); if (!i) return 0
  name = substr(w, 1, i - 1); gsub(/"/, "", name); val = substr(w, i + 1); sub(/^"/, "", val); sub(/"$/, "", val)
  return name == v && (cut || val ~ /[^[:space:]]/) }
'

# What an Environment= (or DefaultEnvironment=) value, on standard input (one line), does to the variable, read as
# systemd's config_parse_environ() reads it: each word unquoted and C-unescaped (review18e F-C:
# "PEERSERVE_"OPERATOR_CA=x and \x50EERSERVE_... were missed), then its specifiers expanded. Prints "set" when a word
# gives it a value, and "cannot check: WORD" for a word whose name holds a specifier (other than %%) that could make it
# this one: what it expands to is not known here. With "pass": a PassEnvironment= value (names, read the same way),
# "set" when one of them is the variable (review19b F7). On standard input, not in awk's environment: one environment string
# is capped at 128 KiB, and a longer value (systemd takes lines up to 1 MiB) failed the exec unnoticed (review19b F1);
# the caller treats a failure as "cannot check".
environment_value_sets_it() {
  LC_ALL=C awk -v v="$operator_ca_var" -v pass="${1:-}" "$extract_words_awk"'
    NR == 1 {
      n = words($0, "c")
      for (k = 1; k <= n; k++) {
        w = W[k]; i = pass ? 0 : index(w, "="); name = i ? substr(w, 1, i - 1) : w; plain = name; gsub(/%%/, "", plain)
        if (index(plain, "%")) {  # the literal text before the first specifier: a prefix of "v=" or not
          pre = ""
          for (j = 1; j <= length(name); j++) {
            c = substr(name, j, 1)
            if (c != "%") { pre = pre c; continue }
            if (substr(name, j + 1, 1) != "%") break
            pre = pre "%"; j++ }
          shown = w (WT[k] ? "..." : "")  # a cut word ends "..."
          gsub(/[[:cntrl:]]/, "?", shown)  # decoded: a control character would break the line
          if (pre == "" || index(v (pass ? "" : "="), pre) == 1) print "cannot check: " shown
          continue }
        gsub(/%%/, "%", w)
        if (pass ? w == v : gives(w, v, WC[k])) print "set" } }'
}

# The files an EnvironmentFile= value names: "-" dropped, the common specifiers (%E %S %C %L %t %%) expanded, a glob
# expanded (systemd allows one). systemd takes only an absolute path: another names nothing (review18d F8). A value
# with another specifier (%h, %N, ...) prints "cannot check: VALUE": this does not know what it names (review18d F2).
environment_files() {
  local pattern=${1#-} percent=$'\001'
  pattern=${pattern//%%/$percent}
  if [[ "$pattern" == *%* ]] && [[ "${pattern//%[ESCLt]/}" == *%* ]]; then echo "cannot check: $1"; return 0; fi
  pattern=${pattern//%E//etc} pattern=${pattern//%S//var/lib} pattern=${pattern//%C//var/cache}
  pattern=${pattern//%L//var/log} pattern=${pattern//%t//run} pattern=${pattern//$percent/%}
  globbed_files "$pattern"
}

# The files an absolute path names, a glob expanded (systemd expands one in EnvironmentFile=), one a line, or one line
# "over: WHY" and nothing else when they are more than env_files_max files or hold more than env_bytes_max bytes
# together (each file read once, up to what is left of that: a file that is not what its size says counts as read);
# a relative path names nothing. systemctl show prints the paths with their specifiers already expanded: they come
# here directly, never through environment_files a second time (review18e F-E: a literal '%' came back "cannot
# check" and went unread).
globbed_files() {
  local pattern=$1 files f left=$env_bytes_max size
  [[ "$pattern" == /* ]] || return 0
  pattern=$unit_root$pattern
  if [[ "$pattern" == *[*?[]* ]]; then files=$(compgen -G "$pattern" | head -n $((env_files_max + 1)) || true)
  else files=$pattern; fi
  [ -n "$files" ] || return 0
  if [ "$(wc -l <<< "$files")" -gt "$env_files_max" ]; then
    echo "over: names more than $env_files_max files, more than this check reads"; return 0
  fi
  while IFS= read -r f; do
    [ -f "$f" ] || continue
    size=$(head -c $((left + 1)) 2>/dev/null < "$f" | wc -c) || size=0  # unreadable: environment_file_named says so
    if [ "$size" -gt "$left" ]; then
      echo "over: names more than $((env_bytes_max >> 20)) MiB (its files together), more than this check reads"
      return 0
    fi
    left=$((left - size))
  done <<< "$files"
  echo "$files"
}

# Prints "set" when the environment file $1 gives the variable a value, read as systemd's env-file parser reads it
# (parse_env_file_internal, src/basic/env-file.c), a state machine over the whole file (review19b F2: a line-wise
# pattern missed =""/x, =''/x, a double quote closed on the next line, =#x and ='#x'): '#' or ';' starts a comment
# only where a key would start; a quote ends back before the value, so text after it still counts ("" /x is "/x");
# a quoted value runs across lines; a backslash escapes a character (an escaped line end is dropped). It errs
# towards "set": a comment ending in a backslash continues onto the next line in systemd before 254 and not after,
# both read; "export NAME" counts as NAME; a NUL (where systemd stops reading) ends a line; a value of characters
# the agent strips (Python's str.strip) may count. Nothing for a missing file; a failed read exits non-zero.
environment_file_sets_it() {
  [ -f "$1" ] || return 0
  head -c "$env_bytes_max" < "$1" | LC_ALL=C tr '\000' '\n' | LC_ALL=C awk -v v="$operator_ca_var" '
    function push(m,   k) {
      k = K[m]; sub(/[ \t\n\r]+$/, "", k); sub(/^export[ \t\n\r]+/, "", k)
      if (k == v && NB[m]) found = 1 }
    function step(m, c,   s) {
      s = S[m]
      if (s == "pre_key") { if (c == "#" || c == ";") S[m] = "comment"; else if (!index(" \t\n\r", c)) { S[m] = "key"; K[m] = c } }
      else if (s == "key") {
        if (c == "\n" || c == "\r") S[m] = "pre_key"
        else if (c == "=") { S[m] = "pre_value"; NB[m] = 0 }
        else if (length(K[m]) < 256) K[m] = K[m] c }  # longer: not this name
      else if (s == "pre_value" || s == "value") {
        if (c == "\n" || c == "\r") { push(m); S[m] = "pre_key" }
        else if (c == "\\") S[m] = "value_escape"
        else if (s == "pre_value" && c == "\047") S[m] = "single_quote"
        else if (s == "pre_value" && c == "\"") S[m] = "double_quote"
        else if (!index(" \t", c)) { S[m] = "value"; if (c ~ /[^[:space:]]/) NB[m] = 1 } }
      else if (s == "value_escape") { S[m] = "value"; if (c ~ /[^[:space:]]/) NB[m] = 1 }
      else if (s == "single_quote") { if (c == "\047") S[m] = "pre_value"; else if (c ~ /[^[:space:]]/) NB[m] = 1 }
      else if (s == "double_quote") {
        if (c == "\"") S[m] = "pre_value"; else if (c == "\\") S[m] = "double_quote_escape"; else if (c ~ /[^[:space:]]/) NB[m] = 1 }
      else if (s == "double_quote_escape") { S[m] = "double_quote"; if (c != "\n") NB[m] = 1 }  # "\\c" or "c": not blank
      else if (s == "comment") { if (c == "\\") S[m] = "comment_escape"; else if (c == "\n" || c == "\r") S[m] = "pre_key" }
      else if (s == "comment_escape") S[m] = m == 1 && (c == "\n" || c == "\r") ? "pre_key" : "comment" }
    BEGIN { S[1] = S[2] = "pre_key" }
    { L = length($0); for (i = 1; i <= L; i++) { c = substr($0, i, 1); step(1, c); step(2, c) }; step(1, "\n"); step(2, "\n") }
    END {
      for (m = 1; m <= 2; m++) if (S[m] != "pre_key" && S[m] != "key" && S[m] !~ /^comment/) push(m)
      if (found) print "set" }'
}

# The environment file $1 when it gives the variable a value; a line saying so when this check failed to read it.
environment_file_named() {
  local said
  if [ -e "$1" ] && [ ! -f "$1" ]; then  # a FIFO, a device, a folder: not read (a FIFO would block; review20b L2)
    echo "$1: not a regular file, which this check does not read: cannot check whether it"
  elif ! said=$(environment_file_sets_it "$1"); then echo "$1: this check failed to read it: cannot check whether it"
  elif [ "$said" = set ]; then echo "$1"
  fi
}

# Offline: the unit file itself wherever it lies (a full copy from systemctl edit --full in /etc, review18e F-E), its
# drop-ins (its own, the prefix ones peerserve-.service.d and service.d) and the files their EnvironmentFile= lines
# read that give PEERSERVE_OPERATOR_CA a value, the manager's DefaultEnvironment= (system.conf and every
# system.conf.d folder systemd reads) and systemd.setenv= on the kernel command line or in systemd's EFI variable
# SystemdOptions (systemd.exec(5): the manager passes these to every unit, review18d F1); where PassEnvironment= names
# the variable, the manager's own environment (manager_own_environment).
operator_ca_in_unit_files() {
  local d f key val env_file said settings what on passed=0
  local unread=": this check failed to read it: cannot check whether it"
  for d in "${unit_dirs[@]}"; do
    for f in "$unit_root$d/$service" "$unit_root$d/$service.d"/*.conf "$unit_root$d/peerserve-.service.d"/*.conf \
             "$unit_root$d/service.d"/*.conf; do
      [ -f "$f" ] || continue
      if ! settings=$(section_settings "$f" Service); then echo "$f$unread"; continue; fi
      while IFS=$'\t' read -r key val; do
        case "$key" in
          Environment)
            if ! said=$(environment_value_sets_it <<< "$val"); then echo "$f: an Environment= line$unread"; continue; fi
            while IFS= read -r said; do
              case "$said" in
                "") ;;
                set) echo "$f" ;;
                *) echo "$f: Environment=${said#cannot check: }, a specifier this check cannot expand: cannot check \
whether it" ;;
              esac
            done <<< "$said" ;;
          PassEnvironment)  # the variable from the service manager's own environment (review19b F7)
            if ! said=$(environment_value_sets_it pass <<< "$val"); then
              echo "$f: a PassEnvironment= line$unread"; continue
            fi
            while IFS= read -r said; do
              case "$said" in
                "") ;;
                set) if [ "$passed" = 0 ]; then passed=1; manager_own_environment "PassEnvironment= in $f"; fi ;;
                *) echo "$f: PassEnvironment=${said#cannot check: }, a specifier this check cannot expand: cannot \
check whether it" ;;
              esac
            done <<< "$said" ;;
          EnvironmentFile)
            while IFS= read -r env_file; do
              case "$env_file" in
                "cannot check: "*) echo "$f: EnvironmentFile=${env_file#cannot check: }, a specifier this check cannot \
expand: cannot check whether it" ;;
                "over: "*) echo "$f: EnvironmentFile=$val ${env_file#over: }: cannot check whether it" ;;
                *) environment_file_named "$env_file" ;;
              esac
            done < <(environment_files "$val") ;;
        esac
      done <<< "$settings"
    done
  done
  manager_setting_sets_it DefaultEnvironment
  # the kernel command line, and systemd's EFI variable SystemdOptions (efivarfs's file, and the copy the manager
  # caches at boot and reads from then on), which systemd reads as more of its command line
  for f in "$unit_root/proc/cmdline" "$unit_root"/sys/firmware/efi/efivars/SystemdOptions-* \
           "$unit_root"/run/systemd/efivars/SystemdOptions-*; do
    [ -e "$f" ] || continue
    case "$f" in
      */proc/cmdline) what="the kernel command line" on=on; said=$(cmdline_sets_it < "$f") ;;
      */sys/firmware/*) what="systemd's EFI variable SystemdOptions" on=in
                        said=$(efi_options_text "$f" | cmdline_sets_it) ;;
      *) what="the manager's copy of systemd's EFI variable SystemdOptions" on=in
         said=$(efi_cache_text "$f" | cmdline_sets_it) ;;
    esac || { echo "$f ($what)$unread"; continue; }
    # (systemd reads the whole variable: past what this check reads, "cannot check", review20b M2)
    if [ "$said" = over ]; then echo "$f ($what): over the 64 KiB this check reads: cannot check whether it"; continue; fi
    [ "$said" != set ] || echo "$f (systemd.setenv= $on $what)"
  done
}

# The manager's configuration files, as systemd reads them (systemd-system.conf(5)): the main file (each place one may
# lie, whichever systemd reads) and every system.conf.d folder's drop-ins.
manager_files() {
  local f
  for f in "$unit_root"{/etc,/run,/usr/local/lib,/usr/lib,/lib}/systemd/system.conf \
           "$unit_root"{/etc,/run,/usr/local/lib,/usr/lib,/lib}/systemd/system.conf.d/*.conf; do
    if [ -f "$f" ]; then echo "$f"; fi
  done
}

# Where the manager's setting $1 (DefaultEnvironment, which the manager passes to every unit; ManagerEnvironment, its
# own environment) gives the variable a value, each as "FILE ($1=$2)"; a word with a specifier that could name it and a
# file this check failed to read are "cannot check".
manager_setting_sets_it() {
  local f key val said settings unread=": this check failed to read it: cannot check whether it"
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    if ! settings=$(section_settings "$f" Manager); then echo "$f$unread"; continue; fi
    while IFS=$'\t' read -r key val; do
      [ "$key" = "$1" ] || continue
      if ! said=$(environment_value_sets_it <<< "$val"); then echo "$f: a $1= line$unread"; continue; fi
      while IFS= read -r said; do
        case "$said" in
          "") ;;
          set) echo "$f ($1=${2:-})" ;;
          *) echo "$f: $1=${said#cannot check: }, a specifier this check cannot expand: cannot check whether it" ;;
        esac
      done <<< "$said"
    done <<< "$settings"
  done < <(manager_files)
}

# Prints "set" when the kernel command line on standard input (its first line) has a systemd.setenv= (or
# rd.systemd.setenv=) word that gives the variable a value (systemd passes it to every unit, systemd(1)), each word
# split as systemd's proc_cmdline_extract_first() does (EXTRACT_UNQUOTE|EXTRACT_RELAX: quotes anywhere in a word
# removed, review18e F-D; a backslash read both ways: newer systemd keeps it, older versions drop it). With "kernel":
# when a word NAME=value before "--" gives it one, which the kernel passes to PID 1 as an environment variable (a
# parameter it does not know whose name holds no ".": unknown_bootoption() in init/main.c), read as the kernel reads
# it (words "d", kgives(): only double quotes are quotes, review20b L1). The whole text is read, as systemd splits it
# at CR and LF too (review20b M1: only its first line was): both become blanks, and a NUL ends it.
cmdline_sets_it() {
  LC_ALL=C tr '\r\n\000' '  \n' | LC_ALL=C awk -v v="$operator_ca_var" -v kernel="${1:-}" "$extract_words_awk"'
    NR == 1 && $0 == "\001over" { print "over"; exit }
    NR == 1 {
      if (kernel) {
        n = words($0, "rkd")
        for (k = 1; k <= n && W[k] != "--"; k++) if (kgives(W[k], v, WC[k])) found = 1 }
      else for (m = 1; m <= 2; m++) {
        n = words($0, m == 1 ? "rk" : "r")
        for (k = 1; k <= n; k++) if (sub(/^(rd\.)?systemd\.setenv=/, "", W[k]) && gives(W[k], v, WC[k])) found = 1 } }
    END { if (found) print "set" }'
}

# The text of systemd's EFI variable SystemdOptions as efivarfs gives it ($1): 4 bytes of attributes, then UTF-16LE,
# printed as one line up to its first NUL, a character past ASCII as a byte no name holds; at most 64 KiB read, and
# past that "over" alone, which cmdline_sets_it passes on (systemd reads it all: a setenv past the cut would be
# missed, review20b M2). (systemd ignores the variable under Secure Boot; this reads it either way.)
efi_options_text() {
  [ -f "$1" ] || return 1
  head -c 65541 2>/dev/null < "$1" | od -An -v -tu1 | LC_ALL=C awk '{ for (i = 1; i <= NF; i++) B[++n] = $i }
    END {
      if (n > 65540) { printf "\001over"; exit }
      for (i = 5; i < n; i += 2) {
        u = B[i] + 256 * B[i + 1]
        if (u == 0) break
        printf "%s", u < 128 ? sprintf("%c", u) : "\377" }
      print "" }'
}

# The text of the manager's cached copy of SystemdOptions ($1), 64 KiB at most, as efi_options_text: "over" past it.
efi_cache_text() {
  local size
  [ -f "$1" ] && size=$(head -c 65537 < "$1" | wc -c) || return 1
  if [ "$size" -gt 65536 ]; then printf '\001over'; else head -c 65536 < "$1"; fi
}

# PID 1's start, in seconds since the epoch: the boot time (/proc/stat's btime) plus its start in clock ticks after
# boot (field 22 of /proc/1/stat, counted after the name's closing parenthesis, as a name may hold spaces).
pid1_started() {
  local btime ticks hz
  btime=$(awk '$1 == "btime" { print $2 }' "$unit_root/proc/stat" 2>/dev/null) && [ -n "$btime" ] || return 1
  ticks=$(sed 's/.*) //' "$unit_root/proc/1/stat" 2>/dev/null | awk '{ print $20 }') && [ -n "$ticks" ] || return 1
  hz=$(getconf CLK_TCK 2>/dev/null) || hz=100
  echo $((btime + ticks / hz))
}

# PassEnvironment= names the variable ($1 says where): the agent takes it from the service manager's own environment,
# which is what PID 1 started with -- the kernel's (its command line's NAME=value words, cmdline_sets_it kernel), or
# a container manager's -- with its ManagerEnvironment= (system.conf and system.conf.d) merged in
# (systemd-system.conf(5); review19b F7 made this "cannot check" whatever they said). Running: PID 1's starting
# environment is /proc/1/environ, which does not show ManagerEnvironment= (read from the files here); a
# ManagerEnvironment= taken out of a file stays in the manager's environment until it restarts (putenv, never unset),
# so a manager file or folder changed since PID 1 started is "cannot check": its ctime, following links (review20b
# H2: an mtime is set back by cp -p, tar x, a dpkg rename; a link's own time misses an edit to its target), and the
# systemd folders' too, as removing a file or folder changes only its parent's (review20b H1); a dangling link counts
# as changed. Not /run/systemd itself: PID 1 mounts /run after it starts and writes there all the time, so its time
# is always later (it would refuse on every running system, and a reboot would not clear it); a system.conf or
# system.conf.d there is always later too, so only one written there and removed again since boot goes unseen.
# (The boot time follows the wall clock: a board without an RTC that steps its clock forward after boot
# makes earlier edits look older than PID 1.) Offline (an image for a later boot), what
# PID 1 will start with is not known here: "cannot check" whatever the files say.
manager_own_environment() {
  local f said started changed passes="which PassEnvironment= passes to the agent"
  local unread=": this check failed to read it: cannot check whether it"
  manager_setting_sets_it ManagerEnvironment ", $passes"
  f="$unit_root/proc/cmdline"
  if [ -e "$f" ]; then
    if ! said=$(cmdline_sets_it kernel < "$f"); then echo "$f (the kernel command line)$unread"
    elif [ "$said" = set ]; then
      echo "$f ($operator_ca_var= on the kernel command line: the kernel gives it to PID 1, $passes)"
    fi
  fi
  if [ "$sd" != running ]; then
    echo "$1 names $operator_ca_var, which takes it from the service manager's own environment: offline, what that \
will start with (from the kernel's command line at boot, or from a container manager) is not known here: cannot check \
whether it"
    return 0
  fi
  f="$unit_root/proc/1/environ"
  if ! said=$(LC_ALL=C tr '\n\000' ' \n' 2>/dev/null < "$f" | LC_ALL=C awk -v v="$operator_ca_var" \
                'index($0, v "=") == 1 && substr($0, length(v) + 2) ~ /[^[:space:]]/ { found = 1 }
                 END { if (found) print "set" }'); then
    echo "$f (the environment the service manager started with)$unread"
  elif [ "$said" = set ]; then
    echo "$f (the environment the service manager started with, $passes)"
  fi
  if ! started=$(pid1_started); then
    echo "$unit_root/proc/1/stat (when the service manager started)$unread"; return 0
  fi
  for f in "$unit_root"{/etc,/usr/local/lib,/usr/lib,/lib}/systemd "$unit_root"{/etc,/run,/usr/local/lib,/usr/lib,/lib}\
/systemd/system.conf{,.d{,/*.conf}}; do
    if [ -L "$f" ] && [ ! -e "$f" ]; then changed="a dangling link"
    elif [ ! -e "$f" ]; then continue
    elif ! changed=$(stat -L -c %Z -- "$f" 2>/dev/null); then changed="unreadable"
    elif [ "$changed" -gt "$started" ]; then changed="changed since the service manager started"
    else continue
    fi
    echo "$f: $changed, and a ManagerEnvironment= taken out of it (or out of a file removed from it) stays in the \
manager's environment until it restarts (reboot), $passes: cannot check whether it"
  done
}

# (grep without -q in a pipeline: under pipefail, a writer cut off by grep -q's early exit would fail the test.)
# Running: what systemd itself has loaded for the unit (systemctl show), and the manager's environment block, which
# it passes to every unit (systemctl set-environment, the kernel's systemd.setenv=, DefaultEnvironment=; review18d F1:
# it was asked only where PassEnvironment= named the variable, which takes it from PID 1's own environment instead).
operator_ca_in_manager() {
  local env_file f
  if systemctl show -p Environment --value "$service" 2>/dev/null | grep -E "$set_it" >/dev/null; then
    echo "the unit's Environment= (systemctl show -p Environment $service; systemctl cat $service shows the file)"
  fi
  while IFS= read -r env_file; do
    env_file=${env_file% (ignore_errors=*}
    [ -n "$env_file" ] || continue
    while IFS= read -r f; do
      case "$f" in
        "over: "*) echo "the unit's EnvironmentFile=$env_file (systemctl show -p EnvironmentFiles $service) ${f#over: }: \
cannot check whether it" ;;
        *) environment_file_named "$f" ;;
      esac
    done < <(globbed_files "$env_file")
  done < <(systemctl show -p EnvironmentFiles --value "$service" 2>/dev/null)
  if systemctl show-environment 2>/dev/null | grep -E "^${operator_ca_var}=[^[:space:]]" >/dev/null; then
    echo "the service manager's environment, which every unit gets (systemctl show-environment; \
systemctl unset-environment $operator_ca_var, or its systemd.setenv= or DefaultEnvironment=)"
  fi
  # PassEnvironment= takes PID 1's own environment as it is now: what it started with and its ManagerEnvironment=
  # (review19b F7), read by manager_own_environment
  if systemctl show -p PassEnvironment --value "$service" 2>/dev/null | tr ' ' '\n' | grep -xF "$operator_ca_var" \
       >/dev/null; then
    manager_own_environment "the unit's PassEnvironment= (systemctl show -p PassEnvironment $service)"
  fi
}

# Every place that gives the agent PEERSERVE_OPERATOR_CA, which it takes over the config (one a line, sorted): where
# systemd runs, systemd's own word, and the looser read of the files either way (a drop-in not yet loaded counts).
# Each line is printed to the terminal: its control characters (C0, DEL, and the bytes 0x80-0x9f, which an 8-bit
# terminal takes for C1 controls such as CSI) are shown as '?', as a file's text or a globbed name may hold an ESC
# (review19b F8; a UTF-8 name with such a byte is shown with '?' in it).
operator_ca_in_environment() {
  { if [ "$sd" = running ]; then operator_ca_in_manager; fi; operator_ca_in_unit_files; } | sort -u \
    | LC_ALL=C tr '\001-\011\013-\037\177-\237' '?'
}

download_wheels() {
  [ -f "$source_dir/pyproject.toml" ] || die "no peerserve source tree at $source_dir (use --source DIR)"
  local venv
  venv=$(mktemp -d)
  python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
  mkdir -p "$download"
  "$venv/bin/python" -m pip download -q -d "$download" "${source_dir}[solver,agent]" "setuptools>=77" \
    || die "pip download into $download failed (is the package index reachable?)"
  rm -rf "$venv"
  say "wheelhouse $download: $(find "$download" -name '*.whl' | wc -l) wheels; install offline with --wheelhouse $download"
}

if [ -n "$download" ]; then download_wheels; exit 0; fi
if [ -n "$token_file" ]; then
  [ -z "$token" ] || die "give --token or --token-file, not both"
  if [ "$token_file" = - ]; then IFS= read -r token || true
  else
    [ -r "$token_file" ] || die "--token-file $token_file: cannot read it"
    IFS= read -r token < "$token_file" || true
  fi
  [ -n "$token" ] || die "--token-file $token_file: no token on its first line"
fi

if [ "$(id -u)" != 0 ] && [ "$dry_run" = 0 ]; then
  die "run as root (sudo $0 ...), or try --dry-run"
fi
sd=$(systemd_state)

# -- uninstall ---------------------------------------------------------------------------------------
if [ "$uninstall" = 1 ]; then
  if [ -f "$unit" ]; then
    if [ "$sd" = running ]; then
      act systemctl disable --now "$service"
      # anything the agent left in its cgroup (KillMode=process keeps model servers over a crash)
      systemctl kill --signal=SIGKILL "$service" 2>/dev/null || true
    elif [ "$sd" = offline ]; then
      act systemctl disable "$service"
    fi
    act rm -f "$unit"
    if [ "$sd" = running ]; then act systemctl daemon-reload; fi
  fi
  if [ -e "$prefix" ]; then act rm -rf "$prefix"; fi
  if [ "$purge" = 1 ]; then
    if [ -e "$etc" ]; then act rm -rf "$etc"; fi
    if [ -e "$data" ]; then act rm -rf "$data"; fi
    if id "$user" >/dev/null 2>&1; then act userdel "$user"; fi
    if getent group "$user" >/dev/null; then act groupdel "$user"; fi
  else
    say "kept $etc, $data and the user $user (remove them with --uninstall --purge)"
  fi
  say "uninstalled"
  exit 0
fi

# -- the operator CA's variable: checked before anything changes ----------------------------------------------
# The agent takes PEERSERVE_OPERATOR_CA over the config's operator_ca. --no-operator-ca with it set would leave the
# mode on and, the CA file removed, an agent that refuses every start (Restart=always) while this said "installed":
# refuse instead, changing nothing, so the board keeps running in the mode (review18a F3).
if [ "$no_operator_ca" = 1 ] || [ -n "$operator_ca" ]; then
  ca_env=$(operator_ca_in_environment)
  if [ -n "$ca_env" ] && [ "$no_operator_ca" = 1 ]; then
    while IFS= read -r f; do echo "install.sh: $f sets PEERSERVE_OPERATOR_CA" >&2; done <<< "$ca_env"
    die "--no-operator-ca changed nothing: the agent takes PEERSERVE_OPERATOR_CA over the config, so the operator \
CA mode would stay on (and with $etc/operator-ca.pub removed the agent would refuse to start); remove that setting \
(an empty value counts as unset), run systemctl daemon-reload, then run this again"
  fi
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    echo "install.sh: warning: $f sets PEERSERVE_OPERATOR_CA, which the agent takes over the config's operator_ca \
($etc/operator-ca.pub): cards are checked against the CA key that file names" >&2
  done <<< "$ca_env"
fi

# -- 1. prerequisites ----------------------------------------------------------------------------------
missing=()
py=$(command -v python3 || true)
if [ -z "$py" ]; then
  missing+=("python3 >= 3.10 (apt-get install python3 python3-venv)")
elif ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  missing+=("python3 >= 3.10 (found $("$py" --version 2>&1); JetPack 6 ships 3.10)")
fi
if [ -z "$runtime" ]; then
  if is_jetson || command -v docker >/dev/null; then runtime=docker; else runtime=process; fi
fi
case "$runtime" in docker|process) ;; *) die "--runtime must be docker or process, not '$runtime'" ;; esac
if [ "$runtime" = docker ]; then
  command -v docker >/dev/null || missing+=("Docker Engine (apt-get install docker.io, or Docker's own packages)")
  if is_jetson && ! command -v nvidia-container-runtime >/dev/null; then
    missing+=("NVIDIA container runtime (apt-get install nvidia-container-toolkit; part of JetPack)")
  fi
fi
command -v useradd >/dev/null || missing+=("useradd (apt-get install passwd)")
if [ -n "$wheelhouse" ]; then  # offline: nothing can come from apt either
  if ! compgen -G "$wheelhouse/*.whl" >/dev/null; then
    die "--wheelhouse $wheelhouse holds no wheels (fill it with --download-wheels on a machine with network)"
  fi
  wheelhouse=$(cd "$wheelhouse" && pwd)
  if [ -n "$py" ] && ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then missing+=("python3-venv (apt)"); fi
  for pkg in libamplsolver-dev g++ cmake make; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg (apt; the solver's build needs it and --wheelhouse installs nothing from apt)")
  done
fi
if [ "${#missing[@]}" -gt 0 ]; then
  for m in "${missing[@]}"; do echo "install.sh: missing: $m" >&2; done
  die "install the missing prerequisites, then run this again"
fi
[ -f "$source_dir/pyproject.toml" ] || die "no peerserve source tree at $source_dir (use --source DIR)"
refuse_source_links

# -- 2. the software -----------------------------------------------------------------------------------
if [ -n "$wheelhouse" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="$wheelhouse"; fi
if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
  act apt-get update -qq
  act env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-dev
fi
if [ ! -x "$prefix/venv/bin/python" ]; then
  act install -d -m 755 "$prefix"
  act "$py" -m venv "$prefix/venv"
fi
want_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$source_dir/pyproject.toml" | head -n 1)
want_digest=$(source_digest)
have_digest=$(cat "$prefix/source.sha256" 2>/dev/null || true)
if [ "$have_digest" != "$want_digest" ] || [ "$dry_run" = 1 ]; then
  install_peerserve
  if [ "$dry_run" = 0 ]; then echo "$want_digest" > "$prefix/source.sha256"; fi
fi
solver_args=(--python "$prefix/venv/bin/python")
if [ -n "$wheelhouse" ]; then solver_args+=(--no-apt); fi
if [ "$dry_run" = 1 ]; then
  echo "would run: bash $source_dir/scripts/install-solver.sh ${solver_args[*]}"
elif ! ls "$prefix"/venv/share/pyomo/lib/libpynumero_ASL.* >/dev/null 2>&1; then
  changed=1
  bash "$source_dir/scripts/install-solver.sh" "${solver_args[@]}"
fi
if is_jetson && ! "$prefix/venv/bin/python" -c 'import jtop' 2>/dev/null; then
  act "$prefix/venv/bin/python" -m pip install -q jetson-stats
fi

# -- 3. user, configuration, data ------------------------------------------------------------------------
if ! id "$user" >/dev/null 2>&1; then
  act useradd --system --user-group --home-dir "$data" --no-create-home --shell /usr/sbin/nologin \
    --comment "peerserve agent" "$user"
fi
if [ "$runtime" = docker ] && getent group docker >/dev/null && ! id -nG "$user" 2>/dev/null | grep -qw docker; then
  act usermod -aG docker "$user"  # the Docker socket is root-equivalent: see docs/operator-guide.md
fi
config="$etc/peerserve.toml"
if [ -f "$config" ]; then
  existing_token=$(sed -n 's/^cluster_token = "\(.*\)"/\1/p' "$config")
  [ -n "$token" ] || token=$existing_token
  [ -n "$node_id" ] || node_id=$(sed -n 's/^node_id = "\(.*\)"/\1/p' "$config")
  [ -n "$interface" ] || interface=$(sed -n 's/^interface = "\(.*\)"/\1/p' "$config")
fi
new_token=0
if [ -z "$token" ]; then
  token=$("$py" -c 'import secrets; print(secrets.token_urlsafe(24))')
  new_token=1
fi
[ "${#token}" -ge 16 ] || die "--token must be at least 16 characters (it has ${#token})"
case "$token" in *[\"\\]*|*[[:cntrl:]]*) die "--token may not hold quotes, backslashes or control characters" ;; esac
if [ -z "$node_id" ]; then
  node_id=$(hostname -s | tr -c 'A-Za-z0-9_\n-' '-' | cut -c1-63)
fi
[[ "$node_id" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$ ]] || die "--node-id '$node_id' must be one DNS label (letters, digits, - and _)"
if [ -z "$interface" ]; then
  [ "$sd" = running ] && interface=$(ip -o route show default 2>/dev/null \
    | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | head -n 1 || true)
  [ -n "$interface" ] || interface=all
fi
address=""
if is_address "$interface"; then
  address=$interface
  if [ "$sd" = running ] && ! ip -o addr show 2>/dev/null | awk '{split($4, a, "/"); print a[1]}' | grep -qxF "$address"; then
    die "--interface $interface: no interface of this machine has that address (ip -brief addr lists them)"
  fi
elif [ "$interface" != all ] && [ "$interface" != auto ]; then
  [[ "$interface" =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]] || die "--interface '$interface' is neither an address nor an interface name"
  if [ "$sd" = running ] && ! ip link show dev "$interface" >/dev/null 2>&1; then
    die "--interface $interface: no such interface here (found: $(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' '))"
  fi
fi
gpu=false
if is_jetson && [ "$runtime" = docker ]; then gpu=true; fi
if [ -n "$catalogue" ]; then
  [ -f "$catalogue" ] || die "--catalogue $catalogue: no such file"
  put_file "$etc/catalogue.toml" 644 root:root "$(cat "$catalogue")"
elif [ ! -f "$etc/catalogue.toml" ]; then
  put_file "$etc/catalogue.toml" 644 root:root "$(cat "$source_dir/agent/data/catalogue.toml")"
fi
# opt-in operator CA: its public key beside the config; the agent refuses to start without this board's card
ca_file="$etc/operator-ca.pub"
if [ "$no_operator_ca" = 1 ]; then
  # the CA file is removed only after the config below is written without operator_ca: if that write fails, the
  # config still names a file that is there (a config naming a missing one stops the agent at its next start)
  kept=""
  for f in board.card revoked.json revoked.stamp.json pin-cards.json; do
    if [ -e "$data/peer/$f" ]; then kept="$kept$f "; fi
  done
  say "operator CA mode off: no operator_ca setting, no $ca_file; the cluster token alone admits peers again${kept:+ (kept in $data/peer for a later --operator-ca: ${kept% })}"
fi
if [ -n "$operator_ca" ]; then
  [ -r "$operator_ca" ] || die "--operator-ca $operator_ca: cannot read it (ca.pub from 'peerserve ca init')"
  [[ "$(tr -d '[:space:]' < "$operator_ca")" =~ ^([A-Za-z0-9_-]{43}=?|[0-9A-Fa-f]{64})$ ]] \
    || die "--operator-ca $operator_ca: not an Ed25519 public key (ca.pub from 'peerserve ca init', not ca.key)"
  put_file "$ca_file" 644 root:root "$(cat "$operator_ca")"
fi
if [ -n "$board_card" ]; then
  [ -r "$board_card" ] || die "--board-card $board_card: cannot read it"
  [ -n "$operator_ca" ] || [ -f "$ca_file" ] || die "--board-card needs --operator-ca (the CA that signed it)"
fi
operator_line=""
if [ "$no_operator_ca" = 0 ] && { [ -n "$operator_ca" ] || [ -f "$ca_file" ]; }; then
  if [ -z "$board_card" ] && [ ! -f "$data/peer/board.card" ]; then
    die "--operator-ca needs this board's card: run install.sh --card-request FILE, have the operator sign FILE \
(peerserve ca sign --ca DIR FILE -o CARD), then install.sh --operator-ca CA.pub --board-card CARD"
  fi
  operator_line="
operator_ca = \"$ca_file\""
fi
put_file "$config" 640 "root:$user" "# peerserve agent settings (see: peerserve agent --help); written by scripts/install.sh
node_id = \"$node_id\"
host = \"0.0.0.0\"
port = 8400
advertise_address = \"$address\"
interface = \"$interface\"
data_dir = \"$data\"
catalogue = \"$etc/catalogue.toml\"
runtime = \"$runtime\"
docker_gpu = $gpu
cluster_token = \"$token\"$operator_line"
if [ "$no_operator_ca" = 1 ] && [ -e "$ca_file" ]; then act rm -f "$ca_file"; fi  # only now: the config no longer names it
[ -d "$data" ] || act install -d -m 700 -o "$user" -g "$user" "$data"
if [ -n "$card_request" ]; then  # the node key is made here if the agent has not made it yet
  act "$prefix/venv/bin/peerserve" card request --node-id "$node_id" --data-dir "$data" --config "$config" \
    -o "$card_request"
fi
if [ -n "$board_card" ] && ! cmp -s "$board_card" "$data/peer/board.card" 2>/dev/null; then
  # refuses a card of another CA, cluster (token) or node id, another board's key, or expired
  act "$prefix/venv/bin/peerserve" card install "$board_card" --data-dir "$data" --config "$config" \
    --operator-ca "$ca_file" --node-id "$node_id"
fi
if [ "$dry_run" = 0 ] && [ -n "$(find "$data" ! -user "$user" -print -quit 2>/dev/null)" ]; then
  act chown -R "$user:$user" "$data"  # an install from before the dedicated user, or the card steps: hand it over
fi
if [ -n "$card_request" ] && [ "$dry_run" = 0 ]; then
  say "wrote this board's card request to $card_request: the operator signs it (peerserve ca sign --ca DIR \
$card_request -o CARD), then run install.sh --operator-ca CA.pub --board-card CARD"
fi

# -- 4. the service --------------------------------------------------------------------------------------
# Compared with k3s's and Consul's units: KillMode=process as both (model servers of the process runtime
# outlive an agent crash and are adopted; a graceful stop or restart ends them, the agent's own doing;
# containers live in dockerd anyway), a dedicated user as
# Consul, never give up restarting as k3s (StartLimitIntervalSec=0), and the sandboxing they leave out.
# The growing restart delay is the agent's own (agent/crash_backoff.py): systemd's RestartSteps needs >= 254,
# and Debian 12 has 252, JetPack 6 249.
devices="PrivateDevices=yes"
if [ "$gpu" = true ]; then devices="PrivateDevices=no"; fi  # jtop and the NVIDIA stack need the GPU devices
put_file "$unit" 644 root:root "[Unit]
Description=peerserve agent (ML model serving on edge boards)
Documentation=man:systemd.exec(5)
After=network-online.target docker.service
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Type=exec
User=$user
Group=$user
ExecStart=$prefix/venv/bin/peerserve agent --config $config
Environment=PYTHONUNBUFFERED=1
Restart=always
RestartSec=1
TimeoutStopSec=20
KillMode=process
LimitNOFILE=65536
StateDirectory=peerserve
StateDirectoryMode=0700
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
$devices
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RemoveIPC=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target"
unit_changed=$file_changed
if [ "$no_start" = 1 ]; then
  say "--no-start: $service is installed but neither enabled nor started"
elif [ "$sd" = running ]; then
  if [ "$unit_changed" = 1 ]; then act systemctl daemon-reload; fi
  systemctl is-enabled --quiet "$service" 2>/dev/null || act systemctl enable --quiet "$service"
  if [ "$changed" = 1 ]; then
    act systemctl restart "$service"  # once, after every change above
  elif ! systemctl is-active --quiet "$service"; then
    act systemctl start "$service"
  fi
  if is_jetson && systemctl list-unit-files jtop.service >/dev/null 2>&1; then
    systemctl is-active --quiet jtop.service || act systemctl enable --now jtop.service
  fi
elif [ "$sd" = offline ]; then
  systemctl is-enabled --quiet "$service" 2>/dev/null || act systemctl enable --quiet "$service"
  if is_jetson && [ -f /lib/systemd/system/jtop.service ]; then act systemctl enable --quiet jtop.service; fi
  say "systemd is not running here (chroot or image build): $service is enabled and starts at the next boot"
else
  say "no systemd here: start the agent with $prefix/venv/bin/peerserve agent --config $config"
fi

if [ "$new_token" = 1 ]; then
  say "generated the cluster token; install the other nodes with:  --token $token"
fi
if [ "$changed" = 0 ]; then
  say "nothing to change: peerserve $want_version is installed as node $node_id"
else
  say "installed peerserve $want_version as node $node_id (runtime $runtime, interface $interface)"
fi
