#!/usr/bin/env bash
# Proves the image's runtime stage without a container engine: builds a Debian
# minbase root with debootstrap (the root the bookworm-slim image is made from),
# applies the LAST stage of deploy/Containerfile to a copy of it by interpreting
# the file itself (RUN in a chroot, COPY --from=<stage> mapped to this
# repository's build outputs, ENV, ARG, LABEL, WORKDIR, VOLUME, EXPOSE, USER,
# ENTRYPOINT, CMD; any other instruction fails the check, so it cannot drift
# from the file), then starts ENTRYPOINT + CMD as the image's USER with exactly
# the image's environment, in its WORKDIR, and from the host: waits for
# SERVING, imports real photos, asks for similar products, checks the HTTP
# probes, and stops the server with SIGTERM, which must exit 0.
#
# The one deviation from `docker run IMAGE`: the server shares the host's
# network, so LOOKBOOK__SERVER__LISTEN and LOOKBOOK__HTTP__LISTEN are set to
# free 127.0.0.1 ports, so that parallel runs do not collide. Like a container
# runtime, the process gets PATH and HOME, a private mount namespace and /proc
# (without /proc the server still serves, but ONNX Runtime logs
# "Error in cpuinfo: failed to parse processor information from /proc/cpuinfo").
#
# Needs root (debootstrap, chroot, mount), the host binary (make setup) and the
# fashion sample. The minbase root is cached in .cache/rootfs/; each run works
# on a fresh copy and removes it. Idempotent.
#
# Usage: bash deploy/rootfs-check.sh            (or: make image-check)
# Environment:
#   CHECK_HTTP=1          check GET /livez and /readyz on the HTTP port (0: skip)
#   LOOKBOOK_BIN          binary that COPY takes for target/release/lookbook and the
#                         client that drives it (default target/release/lookbook)
#   LOOKBOOK_FASHION_DATA catalogue folder (images/ + styles.csv); default
#                         ../shared/data/fashion-sample from the repository root
#   IMPORT_LIMIT=20       photos imported
#   CONTAINERFILE         default deploy/Containerfile
#   DEBIAN_MIRROR         default http://deb.debian.org/debian
#   READY_TIMEOUT=120     seconds to SERVING;  STOP_GRACE=30  seconds to exit after SIGTERM
#   SERVER_TIMEOUT=900    hard bound on the server's life (timeout(1))
#   KEEP_ROOTFS=1         keep this run's root (printed) for inspection
#   READ_ONLY_ROOT=1      serve from a read-only root with writable VOLUMEs, as
#                         `docker run --read-only` and the pod (readOnlyRootFilesystem)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

CHECK_HTTP=${CHECK_HTTP:-1}
CONTAINERFILE=${CONTAINERFILE:-deploy/Containerfile}
LOOKBOOK_BIN=${LOOKBOOK_BIN:-target/release/lookbook}
LOOKBOOK_FASHION_DATA=${LOOKBOOK_FASHION_DATA:-../shared/data/fashion-sample}
IMPORT_LIMIT=${IMPORT_LIMIT:-20}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
READY_TIMEOUT=${READY_TIMEOUT:-120}
STOP_GRACE=${STOP_GRACE:-30}
SERVER_TIMEOUT=${SERVER_TIMEOUT:-900}
KEEP_ROOTFS=${KEEP_ROOTFS:-0}
READ_ONLY_ROOT=${READ_ONLY_ROOT:-0}
cache=.cache/rootfs
# Docker's PATH when the image sets none (debian images set none).
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "rootfs-check: $*"; }
child_of() { # the (single) child process of a pid
    local c=""
    if [[ -r "/proc/$1/task/$1/children" ]]; then read -r c _ < "/proc/$1/task/$1/children" || true; fi
    [[ -n "$c" ]] || c=$(ps -o pid= --ppid "$1" 2> /dev/null | tr -d ' ') || true
    echo "$c"
}
die() {
    echo "rootfs-check: FAILED: $*" >&2
    exit 1
}
now_us() { echo "${EPOCHREALTIME/./}"; }
secs_since() { # microsecond timestamp -> "12.3"
    local us=$(($(now_us) - $1))
    printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000))
}
started_us=$(now_us)

# --- preconditions ---------------------------------------------------------
[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mount)"
for tool in chroot unshare mount timeout python3; do
    command -v "$tool" > /dev/null || die "$tool is needed"
done
case "$LOOKBOOK_BIN" in /*) ;; *) LOOKBOOK_BIN="$repo/$LOOKBOOK_BIN" ;; esac
case "$LOOKBOOK_FASHION_DATA" in /*) ;; *) LOOKBOOK_FASHION_DATA="$repo/$LOOKBOOK_FASHION_DATA" ;; esac
[[ -x "$LOOKBOOK_BIN" ]] || die "$LOOKBOOK_BIN is missing: run make setup"
[[ -f "$LOOKBOOK_FASHION_DATA/styles.csv" && -d "$LOOKBOOK_FASHION_DATA/images" ]] ||
    die "no catalogue in $LOOKBOOK_FASHION_DATA (set LOOKBOOK_FASHION_DATA)"
[[ -f "$CONTAINERFILE" ]] || die "$CONTAINERFILE is missing"
[[ $CHECK_HTTP == 0 || $CHECK_HTTP == 1 ]] || die "CHECK_HTTP must be 0 or 1"
[[ $READ_ONLY_ROOT == 0 || $READ_ONLY_ROOT == 1 ]] || die "READ_ONLY_ROOT must be 0 or 1"
client=$LOOKBOOK_BIN

# --- cleanup on any exit ---------------------------------------------------
work=""
server_pid=""
waiter_pid=""
cleanup() {
    local rc=$?
    set +e
    [[ -n "$waiter_pid" ]] && kill "$waiter_pid" 2> /dev/null
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2> /dev/null; then
        kill -TERM "$(child_of "$server_pid")" 2> /dev/null
        for _ in $(seq 50); do kill -0 "$server_pid" 2> /dev/null || break; sleep 0.1; done
        # timeout(1) leads its own process group: the server is in it.
        kill -KILL -- "-$server_pid" 2> /dev/null
        wait "$server_pid" 2> /dev/null
    fi
    if [[ -n "$work" && -d "$work" ]]; then
        # Mounts live in private namespaces that die with their processes;
        # this only guards against one leaking into the host's.
        grep -F " $work/" /proc/self/mounts | awk '{print $2}' | sort -r | while read -r m; do
            umount -l "$m"
        done
        if [[ $KEEP_ROOTFS == 1 ]]; then
            say "kept this run's root: $work"
        else
            rm -rf --one-file-system "$work"
        fi
    fi
    [[ -n "${ops:-}" ]] && rm -f "$ops"
    [[ -n "$work" ]] && rm -f "$work.wait.log"
    if [[ -n "$work" ]]; then
        if [[ $rc == 0 ]]; then
            rm -f "$work.server.log"
        elif [[ -f "$work.server.log" ]]; then
            echo "rootfs-check: the server's log: $work.server.log" >&2
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. read the runtime stage of the Containerfile ------------------------
# The parser prints one record per instruction of the last stage, fields
# NUL-terminated: NAME, argument count, arguments. It knows the Dockerfile
# grammar the file uses (comments, line continuations, quotes, $VAR/${VAR}
# substitution from ARG and ENV, exec-form JSON) and refuses anything else.
mkdir -p "$cache"
ops="$(mktemp "$cache/ops.XXXXXX")"
python3 - "$CONTAINERFILE" "$repo" "$LOOKBOOK_BIN" > "$ops" << 'PY'
import json, os, re, sys

path, repo, binary = sys.argv[1:4]
KNOWN = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
         "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
         "HEALTHCHECK", "SHELL"}
RUNTIME = {"RUN", "COPY", "ENV", "ARG", "LABEL", "WORKDIR", "VOLUME", "EXPOSE", "USER",
           "ENTRYPOINT", "CMD"}
out = sys.stdout.buffer
lineno = 0


def fail(msg):
    where = f"{path}:{lineno}" if lineno else path
    sys.stderr.write(f"rootfs-check: FAILED: {where}: {msg}\n")
    sys.exit(3)


def emit(name, *args):
    for field in (name, str(len(args)), *args):
        out.write(field.encode() + b"\0")


VAR = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def expand(text, i, env):
    m = VAR.match(text, i)
    if not m:
        return "$", i + 1
    value = env.get(m.group(1) or m.group(4), "")
    if m.group(2) == "-" and not value:
        value = m.group(3)
    elif m.group(2) == "+":
        value = m.group(3) if value else ""
    return value, m.end()


def words(text, env):
    """Dockerfile word splitting: quotes, backslash escapes, $VAR substitution."""
    result, cur, i, n = [], None, 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\n":
            if cur is not None:
                result.append(cur)
                cur = None
            i += 1
            continue
        cur = cur or ""
        if c == "\\" and i + 1 < n:
            cur, i = cur + text[i + 1], i + 2
        elif c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                fail("unterminated ' quote")
            cur, i = cur + text[i + 1:j], j + 1
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\$':
                    cur, i = cur + text[i + 1], i + 2
                elif text[i] == "$":
                    value, i = expand(text, i, env)
                    cur += value
                else:
                    cur, i = cur + text[i], i + 1
            if i >= n:
                fail('unterminated " quote')
            i += 1
        elif c == "$":
            value, i = expand(text, i, env)
            cur += value
        else:
            cur, i = cur + c, i + 1
    if cur is not None:
        result.append(cur)
    return result


def pairs(text, env, what):
    result = []
    for word in words(text, env):
        key, eq, value = word.partition("=")
        if not eq or not key:
            fail(f"{what} needs KEY=value pairs (the legacy 'KEY value' form is not supported)")
        result.append((key, value))
    return result


def exec_form(text, what):
    text = text.strip()
    try:
        argv = json.loads(text)
    except ValueError:
        argv = None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        fail(f"{what} must be in exec form (a JSON array of strings): a shell form would "
             "run the server under /bin/sh, which does not pass SIGTERM on")
    return argv


def absolute(p, workdir):
    return os.path.normpath(p if p.startswith("/") else os.path.join(workdir, p))


# logical lines: comments dropped (also inside continuations), continuations joined
logical, buf, start = [], None, 0
for lineno, raw in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
    stripped = raw.strip()
    if stripped.startswith("#"):
        if re.match(r"#\s*escape\s*=", stripped) and not logical and buf is None:
            fail("the escape parser directive is not supported")
        continue
    if not stripped:
        continue
    if buf is None:
        buf, start = "", lineno
    m = re.search(r"\\[ \t]*$", raw)
    if m:
        buf += raw[:m.start()]
        continue
    logical.append((start, buf + raw))
    buf = None
if buf is not None:
    fail("the file ends inside a line continuation")

stages, global_args = [], {}
for lineno, line in logical:
    keyword, _, rest = line.strip().partition(" ")
    keyword, rest = keyword.upper(), rest.strip()
    if keyword not in KNOWN:
        fail(f"unknown instruction {keyword}")
    if keyword == "FROM":
        toks = words(rest, global_args)
        if any(t.startswith("--") for t in toks):
            fail("FROM flags are not supported by the check")
        if len(toks) == 3 and toks[1].upper() == "AS":
            name = toks[2].lower()
        elif len(toks) == 1:
            name = None
        else:
            fail("expected FROM IMAGE [AS NAME]")
        parent = next((s for s in stages if s["name"] == toks[0].lower()), None)
        stages.append({"name": name, "base": toks[0], "line": lineno, "body": [],
                       "workdir": parent["workdir"] if parent else "/"})
        continue
    if not stages:
        if keyword != "ARG":
            fail(f"{keyword} before the first FROM")
        for word in words(rest, global_args):
            key, _, value = word.partition("=")
            global_args[key] = value
        continue
    stage = stages[-1]
    stage["body"].append((lineno, keyword, rest))
    if keyword == "WORKDIR":
        # Build stages are not interpreted; their WORKDIR only maps COPY --from
        # sources to the repository (the runtime stage's is tracked below).
        if "$" in rest or stage["workdir"] is None:
            stage["workdir"] = None
        else:
            stage["workdir"] = absolute(words(rest, {})[0], stage["workdir"])

if not stages:
    fail("no FROM")
runtime = stages[-1]
lineno = runtime["line"]
m = re.fullmatch(r"debian:([a-z]+)(-slim)?", runtime["base"])
if not m:
    fail(f"the runtime stage is FROM {runtime['base']}; the check builds Debian roots only "
         "(debian:<suite> or debian:<suite>-slim)")
emit("BASE", runtime["base"], m.group(1))
by_name = {s["name"]: s for s in stages[:-1] if s["name"]}
by_name.update({str(i): s for i, s in enumerate(stages[:-1])})

env, workdir = {}, "/"
for lineno, keyword, rest in runtime["body"]:
    if keyword not in RUNTIME:
        fail(f"{keyword} in the runtime stage is not known to deploy/rootfs-check.sh: "
             "teach the check what it means, or leave it out")
    if keyword == "RUN":
        if rest.startswith("--"):
            fail("RUN flags (--mount, --network, ...) are not supported by the check")
        if re.search(r"<<-?\s*['\"]?\w", rest):
            fail("RUN heredocs are not supported by the check")
        argv = exec_form(rest, "RUN") if rest.startswith("[") else ["/bin/sh", "-c", rest]
        emit("RUN", *argv)
    elif keyword == "COPY":
        toks = exec_form(rest, "COPY") if rest.startswith("[") else words(rest, env)
        stage = None
        while toks and toks[0].startswith("--"):
            flag = toks.pop(0)
            if not flag.startswith("--from="):
                fail(f"COPY {flag} is not supported by the check")
            stage = by_name.get(flag[len("--from="):].lower())
            if stage is None:
                fail(f"COPY {flag}: no such build stage in this file")
        if len(toks) < 2:
            fail("COPY needs a source and a destination")
        *sources, dest = toks
        into_dir = dest.endswith("/") or len(sources) > 1
        fields = [absolute(dest, workdir), "1" if into_dir else "0"]
        for src in sources:
            if any(c in src for c in "*?["):
                fail(f"COPY source {src}: wildcards are not supported by the check")
            if stage is None:
                rel = os.path.normpath(src.lstrip("/"))
            else:
                root = (stage["workdir"] or "/").rstrip("/") + "/"
                if not src.startswith(root) or root == "/":
                    fail(f"COPY --from source {src} is outside the stage's WORKDIR "
                         f"{stage['workdir']}, which the check maps to the repository")
                rel = os.path.normpath(src[len(root):])
            if rel.startswith(".."):
                fail(f"COPY source {src} leaves the repository")
            host = binary if rel == "target/release/lookbook" else os.path.join(repo, rel)
            fields += [src, host]
        emit("COPY", *fields)
    elif keyword == "ENV":
        for key, value in pairs(rest, env, "ENV"):
            env[key] = value
            emit("ENV", key, value)
    elif keyword == "ARG":
        for word in words(rest, env):
            key, eq, value = word.partition("=")
            if not eq:
                value = global_args.get(key, "")
            env.setdefault(key, value)
            emit("ARG", key, value)
    elif keyword == "LABEL":
        for key, value in pairs(rest, env, "LABEL"):
            emit("LABEL", key, value)
    elif keyword == "WORKDIR":
        toks = words(rest, env)
        if len(toks) != 1:
            fail("WORKDIR takes one path")
        workdir = absolute(toks[0], workdir)
        emit("WORKDIR", workdir)
    elif keyword == "VOLUME":
        vols = exec_form(rest, "VOLUME") if rest.startswith("[") else words(rest, env)
        for vol in vols:
            emit("VOLUME", absolute(vol, "/"))
    elif keyword == "EXPOSE":
        emit("EXPOSE", *words(rest, env))
    elif keyword == "USER":
        toks = words(rest, env)
        if len(toks) != 1 or not re.fullmatch(r"\d+(:\d+)?", toks[0]):
            fail("USER must be numeric UID[:GID] for the check (and for runAsNonRoot)")
        emit("USER", toks[0])
    elif keyword in ("ENTRYPOINT", "CMD"):
        emit(keyword, *exec_form(rest, keyword))
PY

# Reads one record from fd 3 into $op and the array args.
read_op() {
    local n k a
    IFS= read -r -d '' -u 3 op || return 1
    IFS= read -r -d '' -u 3 n
    args=()
    for ((k = 0; k < n; k++)); do
        IFS= read -r -d '' -u 3 a
        args+=("$a")
    done
}
exec 3< "$ops"
read_op && [[ $op == BASE ]] || die "parser gave no base image"
base_image=${args[0]}
suite=${args[1]}

# --- 2. the minbase root, cached -------------------------------------------
base="$cache/$suite-minbase"
exec 8> "$cache/.lock"
flock 8
if [[ ! -f "$base.complete" ]]; then
    if ! command -v debootstrap > /dev/null; then
        say "installing debootstrap (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq debootstrap > "$cache/apt.log" 2>&1 ||
            { apt-get update -qq >> "$cache/apt.log" 2>&1 && apt-get install -y -qq debootstrap >> "$cache/apt.log" 2>&1; } ||
            { tail -20 "$cache/apt.log" >&2; die "cannot install debootstrap"; }
    fi
    say "creating the $suite minbase root with debootstrap from $DEBIAN_MIRROR (once; cached in $base)"
    t=$(now_us)
    rm -rf --one-file-system "$base" "$base.tmp"
    if ! debootstrap --variant=minbase "$suite" "$base.tmp" "$DEBIAN_MIRROR" > "$cache/debootstrap.log" 2>&1; then
        tail -20 "$cache/debootstrap.log" >&2
        die "debootstrap failed (log: $cache/debootstrap.log)"
    fi
    # The slim image carries no package files either.
    rm -f "$base.tmp"/var/cache/apt/archives/*.deb
    mv "$base.tmp" "$base"
    touch "$base.complete"
    say "debootstrap took $(secs_since "$t") s"
fi
work="$(mktemp -d "$repo/$cache/run.XXXXXX")"
chmod 0755 "$work"
cp -a --reflink=auto "$base/." "$work/"
exec 8>&-
base_size=$(du -sh --one-file-system "$base" | cut -f1)

# --- 3. apply the runtime stage --------------------------------------------
# What a container runtime does before it starts a process, in the root:
# private mount namespace with /proc, chroot, the user, exactly the given
# environment, the working directory. Arguments: ROOT UID:GID DIR RW
# [NAME=VALUE...] ARGV..., where RW is "-" for a writable root, or the
# colon-separated VOLUMEs that stay writable on a read-only one.
# shellcheck disable=SC2016 # expanded by that /bin/sh
enter_root='
    root=$1 user=$2 dir=$3 rw=$4
    shift 4
    if [ "$rw" != - ]; then
        mount --bind "$root" "$root" || exit 125
        IFS=:
        for v in $rw; do mount --bind "$root$v" "$root$v" || exit 125; done
        unset IFS
        mount -o remount,bind,ro "$root" || exit 125
    fi
    mount -t proc -o nosuid,nodev,noexec proc "$root/proc" || exit 125
    exec chroot --userspec="$user" "$root" /usr/bin/env -i -C "$dir" "$@"'
in_root() { # UID:GID DIR [NAME=VALUE...] ARGV...
    unshare --mount --propagation private -- /bin/sh -c "$enter_root" in_root "$work" "$1" "$2" - "${@:3}" < /dev/null
}

say "applying the runtime stage of $CONTAINERFILE (FROM $base_image) to a copy of the $suite minbase root"
declare -a image_env=() build_args=() entrypoint=() cmd=() volumes=() exposed=() copied=()
declare -A labels=()
user=0:0
workdir=/
entrypoint_set=0
cmd_set=0
while read_op; do
    case $op in
        RUN)
            say "  RUN ${args[*]: -1}"
            in_root "$user" "$workdir" "PATH=$DEFAULT_PATH" "${build_args[@]}" "${image_env[@]}" "${args[@]}" ||
                die "RUN failed: ${args[*]}"
            ;;
        COPY)
            dest=${args[0]}
            into_dir=${args[1]}
            for ((i = 2; i < ${#args[@]}; i += 2)); do
                src=${args[i]} host=${args[i + 1]}
                [[ -e "$host" ]] || die "COPY $src: $host is missing (run make setup)"
                if [[ $into_dir == 1 ]]; then target="$dest/$(basename "$src")"; else target=$dest; fi
                mkdir -p "$work$(dirname "$target")"
                if [[ -d "$host" ]]; then
                    mkdir -p "$work$target"
                    cp -a "$host/." "$work$target/"
                    chown -R 0:0 "$work$target"
                else
                    cp -L --preserve=mode,timestamps "$host" "$work$target"
                    chown 0:0 "$work$target"
                fi
                copied+=("$target")
                say "  COPY ${host#"$repo/"} -> $target ($(du -sh "$work$target" | cut -f1))"
            done
            ;;
        ENV)
            image_env+=("${args[0]}=${args[1]}")
            say "  ENV ${args[0]}=${args[1]}"
            ;;
        ARG) build_args+=("${args[0]}=${args[1]}") ;;
        LABEL) labels[${args[0]}]=${args[1]} ;;
        WORKDIR)
            workdir=${args[0]}
            mkdir -p "$work$workdir"
            ;;
        VOLUME)
            volumes+=("${args[0]}")
            mkdir -p "$work${args[0]}"
            ;;
        EXPOSE) exposed+=("${args[@]}") ;;
        USER) user=${args[0]} ;;
        ENTRYPOINT)
            entrypoint=("${args[@]}")
            entrypoint_set=1
            ;;
        CMD)
            cmd=("${args[@]}")
            cmd_set=1
            ;;
        *) die "internal: unknown record $op" ;;
    esac
done
exec 3<&-
rm -f "$ops"
ops=""
# The base image's CMD (["bash"]) is dropped when the stage sets an ENTRYPOINT.
((cmd_set || entrypoint_set)) || die "the runtime stage sets neither ENTRYPOINT nor CMD"
argv=("${entrypoint[@]}" "${cmd[@]}")
[[ ${argv[0]} == /* && ${argv[0]} != *=* ]] || die "ENTRYPOINT/CMD must start with an absolute path: ${argv[*]}"
[[ $user == *:* ]] || user="$user:$(awk -F: -v u="$user" '$3 == u {print $4}' "$work/etc/passwd")"
uid=${user%%:*}
[[ $uid != 0 ]] || die "the image runs as root (USER is missing or 0)"
home=$(awk -F: -v u="$uid" '$3 == u {print $6}' "$work/etc/passwd")
image_size=$(du -sh --one-file-system "$work" | cut -f1)

for key in $(printf '%s\n' "${!labels[@]}" | sort); do say "  LABEL $key=${labels[$key]}"; done
say "  VOLUME ${volumes[*]:-(none)}  WORKDIR $workdir  EXPOSE ${exposed[*]:-(none)}  USER $user"
say "  ENTRYPOINT + CMD: ${argv[*]}"
crate_version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
label_version=${labels[org.opencontainers.image.version]:-}
[[ -z "$label_version" || "$label_version" == "$crate_version" ]] ||
    die "LABEL org.opencontainers.image.version=$label_version but Cargo.toml has $crate_version"

# Every ELF file the stage copied must find its shared libraries in the root.
libs_report=()
for f in "${copied[@]}"; do
    [[ -f "$work$f" && "$(head -c 4 "$work$f")" == $'\x7fELF' ]] || continue
    out=$(in_root 0:0 / "PATH=$DEFAULT_PATH" ldd "$f" 2>&1) || die "ldd $f failed: $out"
    if grep -q 'not found' <<< "$out"; then
        die "$f needs shared libraries the root lacks:"$'\n'"$(grep 'not found' <<< "$out")"
    fi
    needed=()
    while read -r lib; do
        pkg=$(in_root 0:0 / "PATH=$DEFAULT_PATH" dpkg -S "*/$lib" 2> /dev/null | grep -v -- '-gdb.py' | head -1 | cut -d: -f1)
        needed+=("$lib${pkg:+ ($pkg)}")
    done < <(awk '$2 == "=>" {print $1}' <<< "$out")
    libs_report+=("$(basename "$f"): $(IFS=,; echo "${needed[*]}" | sed 's/,/, /g')")
done

# --- 4. serve ----------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
http_port=$(free_port)
while [[ $http_port == "$grpc_port" ]]; do http_port=$(free_port); done
overrides=("LOOKBOOK__SERVER__LISTEN=127.0.0.1:$grpc_port" "LOOKBOOK__HTTP__LISTEN=127.0.0.1:$http_port")
rw=-
if [[ $READ_ONLY_ROOT == 1 ]]; then
    rw=$(IFS=:; echo "${volumes[*]}")
    say "READ_ONLY_ROOT=1: the root is read-only except ${volumes[*]} (docker run --read-only; the pod's readOnlyRootFilesystem)"
fi
run_env=("PATH=$DEFAULT_PATH" "HOME=${home:-/}" "${image_env[@]}" "${overrides[@]}")
say "starting ${argv[*]} as $user in $workdir with: ${run_env[*]}"
say "the only deviation from \`docker run\`: ${overrides[*]} (shared host network; free ports so parallel runs do not collide)"
log="$work.server.log"
t_start=$(now_us)
timeout --kill-after=10 "$SERVER_TIMEOUT" \
    unshare --mount --propagation private -- /bin/sh -c "$enter_root" serve \
    "$work" "$user" "$workdir" "$rw" "${run_env[@]}" "${argv[@]}" > "$log" 2>&1 &
server_pid=$!
server_failed() {
    sed 's/\x1b\[[0-9;]*m//g' "$log" | tail -30 >&2
    die "$*"
}
url="http://127.0.0.1:$grpc_port"

"$client" wait-ready --server "$url" --timeout "$READY_TIMEOUT" > "$work.wait.log" 2>&1 &
waiter_pid=$!
while kill -0 "$waiter_pid" 2> /dev/null; do
    kill -0 "$server_pid" 2> /dev/null || server_failed "the server exited before SERVING (its log above)"
    sleep 0.1
done
rc=0
wait "$waiter_pid" || rc=$?
waiter_pid=""
((rc == 0)) || server_failed "not SERVING within ${READY_TIMEOUT} s: $(cat "$work.wait.log")"
startup=$(secs_since "$t_start")
say "SERVING after $startup s"

checks=("SERVING on grpc.health.v1 after $startup s")
out=$(timeout 300 "$client" import "$LOOKBOOK_FASHION_DATA" --server "$url" --limit "$IMPORT_LIMIT" 2>&1) ||
    server_failed "import failed: $out"
echo "$out" | sed 's/^/    /'
[[ $out =~ imported\ ([0-9]+)\ products\ \(([0-9]+)\ new,\ ([0-9]+)\ replaced,\ ([0-9]+)\ failed ]] ||
    server_failed "unexpected import output"
imported=${BASH_REMATCH[1]}
((imported > 1 && BASH_REMATCH[4] == 0)) || server_failed "import: $imported imported, ${BASH_REMATCH[4]} failed"
checks+=("import of $imported real photos: ${BASH_REMATCH[2]} new, ${BASH_REMATCH[4]} failed")

# The first product of styles.csv with a photo: the import reads in file order.
product=""
while IFS=, read -r id _; do
    [[ -n "$id" && -f "$LOOKBOOK_FASHION_DATA/images/$id.jpg" ]] && { product=$id; break; }
done < <(tail -n +2 "$LOOKBOOK_FASHION_DATA/styles.csv")
[[ -n "$product" ]] || die "no product id found in styles.csv"
out=$(timeout 60 "$client" similar --server "$url" --product "$product" -k 5 2>&1) || server_failed "similar failed: $out"
echo "$out" | sed 's/^/    /'
rows=$(grep -cE '^│ *[0-9]+ ' <<< "$out" || true)
want=$((imported - 1 < 5 ? imported - 1 : 5))
((rows == want)) || server_failed "similar --product $product -k 5 printed $rows rows, expected $want"
checks+=("similar --product $product -k 5: $rows rows")

if [[ $CHECK_HTTP == 1 ]]; then
    http_status() {
        if command -v curl > /dev/null; then
            curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1" || true
        else
            python3 -c 'import sys, urllib.request, urllib.error
try: print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except urllib.error.HTTPError as e: print(e.code)
except Exception: print("000")' "$1"
        fi
    }
    for probe in livez readyz; do
        status=$(http_status "http://127.0.0.1:$http_port/$probe")
        [[ $status == 200 ]] || server_failed "GET /$probe on the HTTP port ($http_port) answered $status, expected 200 (CHECK_HTTP=0 skips this)"
    done
    checks+=("HTTP GET /livez and /readyz: 200")
else
    checks+=("HTTP probes skipped (CHECK_HTTP=0)")
fi

# --- 5. stop -----------------------------------------------------------------
# As `docker stop` does: one SIGTERM to the process itself. timeout(1) would
# pass a signal on twice (to its child and its process group), and the server
# takes a second one as "exit at once". The entrypoint must be the server
# itself, exec'd with no shell in between (it is PID 1 in a container).
server_proc=$(child_of "$server_pid")
[[ -n "$server_proc" && "$(readlink "/proc/$server_proc/exe")" == *"${argv[0]}" ]] ||
    server_failed "the process timeout(1) started is not ${argv[0]} (pid ${server_proc:-none})"
t_stop=$(now_us)
kill -TERM "$server_proc"
for _ in $(seq $((STOP_GRACE * 10))); do
    kill -0 "$server_pid" 2> /dev/null || break
    sleep 0.1
done
kill -0 "$server_pid" 2> /dev/null && server_failed "still running ${STOP_GRACE} s after SIGTERM"
rc=0
wait "$server_pid" || rc=$?
server_pid=""
((rc == 0)) || server_failed "exit status $rc after SIGTERM, expected 0"
checks+=("SIGTERM: exit 0 after $(secs_since "$t_stop") s")

# The store landed in the VOLUME, owned by the service user. Anything else the
# server wrote must be under /tmp (writable in a container's root; the pod gives
# the server a read-only root, where such a write fails): listed, not fatal.
for vol in "${volumes[@]}"; do
    n=$(find "$work$vol" -mindepth 1 | wc -l)
    ((n > 0)) || die "nothing was written to the VOLUME $vol"
    foreign=$(find "$work$vol" -mindepth 1 ! -uid "$uid" | head -3)
    [[ -z "$foreign" ]] || die "files in $vol not owned by $uid: $foreign"
    checks+=("VOLUME $vol: $n entries, all owned by $uid ($(du -sh "$work$vol" | cut -f1))")
done
prune=()
for vol in "${volumes[@]}"; do prune+=(-path "$work$vol" -prune -o); done
stray=$(find "$work" -xdev "${prune[@]}" -uid "$uid" -print | sed "s|^$work||" | sort)
outside_tmp=$(grep -v '^/tmp/' <<< "$stray" || true)
[[ -z "$outside_tmp" ]] || die "the server wrote outside its VOLUME and /tmp: $outside_tmp"
stray=$(tr '\n' ' ' <<< "$stray" | sed 's/ *$//')
ro_note=""
[[ $rw == - ]] || ro_note=" (read-only root)"
checks+=("written outside the VOLUME: ${stray:-nothing}${stray:+ (under /tmp only)}$ro_note")
echo
say "summary"
echo "  Containerfile:  $CONTAINERFILE, runtime stage FROM $base_image, applied to a debootstrap --variant=minbase $suite root"
echo "  root:           minbase $base_size (cached in $base), with the stage applied $image_size"
for l in "${libs_report[@]}"; do echo "  shared libs:    $l: all found"; done
echo "  start-up:       $startup s to SERVING"
for c in "${checks[@]}"; do echo "  checked:        $c"; done
echo "  deviation:      ${overrides[*]} (the only one; the image's ENV otherwise exactly, plus PATH and HOME as docker sets them)"
[[ $rw == - ]] || echo "  asked for:      READ_ONLY_ROOT=1: read-only root, writable ${volumes[*]}"
echo "  total:          $(secs_since "$started_us") s"
say "OK"
