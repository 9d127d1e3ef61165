#!/usr/bin/env bash
# Validate docker-compose.yml (and lint the Dockerfile) without a Docker engine.
#
# Compose validator, first found: `docker compose` (v2 plugin), `docker-compose`
# (v1). With neither, as root with apt-get, it installs Debian's docker-compose
# (1.29.2 on bookworm; `config` needs no engine). If none can be had it prints
# SKIP and exits 0. An invalid file exits non-zero.
#
# Dockerfile: hadolint when it is installed (never installed here), plus a
# structural check of the instructions that needs nothing.
#
# Usage: [DOCKERFILE=path] scripts/check-compose.sh [compose-file]
#        (defaults: Dockerfile, docker-compose.yml)
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE_FILE=${1:-docker-compose.yml}
DOCKERFILE=${DOCKERFILE:-Dockerfile}
status=0

log() { printf '%s\n' "$*" >&2; }

install_compose_v1() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  log "check-compose: installing Debian's docker-compose package"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1; then
    # The package lists may be missing or stale: refresh them only now.
    apt-get update -qq >/dev/null 2>&1 || return 1
    apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 || return 1
  fi
  command -v docker-compose >/dev/null 2>&1
}

validator=()
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  validator=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  validator=(docker-compose)
elif install_compose_v1; then
  validator=(docker-compose)
fi

# ---- docker-compose.yml -----------------------------------------------------
if [ ${#validator[@]} -eq 0 ]; then
  echo "SKIP: no Compose validator (no 'docker compose', no 'docker-compose', and it could not be installed); $COMPOSE_FILE not validated"
else
  version=$("${validator[@]}" version 2>/dev/null | head -n 1 || true)
  echo "compose validator: ${validator[*]} (${version:-version unknown})"
  # Interpolated as `up` would: with the caller's environment and any .env here.
  if out=$("${validator[@]}" -f "$COMPOSE_FILE" --project-directory . config -q 2>&1); then
    [ -n "$out" ] && printf '%s\n' "$out"
    # Warnings (unknown keys, unset variables) do not fail `config`; fail on them here.
    if printf '%s\n' "$out" | grep -qiE 'warn|unsupported|not supported|ignored'; then
      echo "FAIL: $COMPOSE_FILE is valid but the validator warned (above)"
      status=1
    else
      echo "OK: $COMPOSE_FILE"
    fi
  else
    printf '%s\n' "$out"
    echo "FAIL: $COMPOSE_FILE is invalid"
    status=1
  fi
fi

# ---- Dockerfile ---------------------------------------------------------------
if command -v hadolint >/dev/null 2>&1; then
  echo "Dockerfile linter: hadolint ($(hadolint --version 2>/dev/null | head -n 1))"
  if hadolint "$DOCKERFILE"; then echo "OK: $DOCKERFILE (hadolint)"; else status=1; fi
else
  echo "Dockerfile linter: hadolint not installed; structural check only"
fi

# Every logical line (after joining '\' continuations) must start with a known
# instruction, the first one (past ARGs) must be FROM, and JSON-form CMD /
# ENTRYPOINT / HEALTHCHECK CMD must be valid JSON arrays of strings.
if ! python3 - "$DOCKERFILE" <<'PY'
import json, re, sys

KNOWN = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
         "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
         "HEALTHCHECK", "SHELL"}
path = sys.argv[1]
errors, lines, buf, start = [], [], "", 0
for no, raw in enumerate(open(path, encoding="utf-8"), 1):
    line = raw.rstrip("\n")
    stripped = line.strip()
    if stripped.startswith("#") and (buf or not stripped.startswith("# syntax")):
        continue  # comments, also inside a continued instruction
    if not buf:
        if not stripped:
            continue
        start = no
    if line.endswith("\\"):
        buf += line[:-1] + " "
        continue
    buf += line
    lines.append((start, buf.strip()))
    buf = ""
if buf:
    errors.append(f"line {start}: file ends inside a '\\' continuation")

seen_from = False
for no, text in lines:
    if text.startswith("# syntax"):
        continue
    word, _, rest = text.partition(" ")
    keyword = word.upper()
    if keyword not in KNOWN:
        errors.append(f"line {no}: unknown instruction {word!r}")
        continue
    if keyword == "FROM":
        seen_from = True
    elif keyword != "ARG" and not seen_from:
        errors.append(f"line {no}: {keyword} before the first FROM")
    if keyword == "HEALTHCHECK":
        rest = re.sub(r"^(\s*--\w[\w-]*=\S+)*\s*", "", rest)
        if rest.upper() == "NONE":
            continue
        if not rest.upper().startswith("CMD"):
            errors.append(f"line {no}: HEALTHCHECK needs CMD or NONE")
            continue
        rest = rest[3:]
    if keyword in {"CMD", "ENTRYPOINT", "HEALTHCHECK", "SHELL"} and rest.lstrip().startswith("["):
        try:
            value = json.loads(rest)
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ValueError("not a list of strings")
        except ValueError as exc:
            errors.append(f"line {no}: {keyword} JSON form is invalid: {exc}")
if not seen_from:
    errors.append("no FROM instruction")
for e in errors:
    print(f"{path}: {e}")
print(f"{path}: {len(lines)} instructions checked, {len(errors)} problem(s)")
sys.exit(1 if errors else 0)
PY
then
  echo "FAIL: $DOCKERFILE"
  status=1
else
  echo "OK: $DOCKERFILE (structure)"
fi

exit "$status"
