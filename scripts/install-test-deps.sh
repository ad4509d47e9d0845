#!/usr/bin/env bash
# Everything the test suite needs, into the venv whose bin directory is $1.
# torch comes first, pinned to the CPU build that lies on this machine's disk: a plain
# `torch` requirement pulled in by sentence-transformers would download a multi-GB CUDA build.
# Chromium comes from Debian for the one real-browser test; Playwright drives it and never
# downloads a browser of its own.
set -euo pipefail
BIN=${1:-.venv/bin}
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
"$BIN/pip" install --quiet torch==2.13.0
"$BIN/pip" install --quiet -e '.[notebooks,test,semantic]'
