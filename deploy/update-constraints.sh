#!/usr/bin/env bash
# Re-resolve the pinned test environment: every dependency of the core install and of the `dev` and
# `scale` extras, at the newest release pyproject.toml allows, resolved in a fresh venv and written to
# constraints.txt. The README's install command and .ci/run install through that file, so a release
# published after the last run of this script changes nothing until it is run again, the suite
# passes, and both files are committed together.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev,scale]'
{
  echo "# Pinned test environment (core + dev + scale extras), resolved $(date -u +%Y-%m-%d) on Python $(python3 -c 'import sys; print(*sys.version_info[:2], sep=".")')."
  echo "# Regenerate with deploy/update-constraints.sh; install with: python3 -m pip install -c constraints.txt -e '.[dev]'"
  "$work/venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
