#!/bin/sh
# Runs as root INSIDE the image being built, by both agent-image/Dockerfile and
# hack/build-image, so the two install the same thing. Expects in $1 (default
# /tmp/agentarmy-wheels): the agentarmy wheel, every wheel of constraints.txt,
# constraints.txt itself and a pip wheel. pip runs from its wheel and is not
# installed: the image ends with no pip, no compiler, no package caches.
set -eu
wheels=${1:-/tmp/agentarmy-wheels}
uid=65532

# System-wide (/usr/local), exactly the pinned closure; no index, no network.
python3 "$(ls "$wheels"/pip-*.whl)/pip" install \
  --no-index --find-links "$wheels" --constraint "$wheels/constraints.txt" \
  --no-cache-dir --break-system-packages --root-user-action=ignore \
  --no-warn-script-location --disable-pip-version-check --quiet \
  agentarmy

# The user the pods run as (runAsUser/runAsGroup 65532), with a home, like distroless.
echo "nonroot:x:$uid:$uid:nonroot:/home/nonroot:/usr/sbin/nologin" >>/etc/passwd
echo "nonroot:x:$uid:" >>/etc/group
mkdir -p /home/nonroot && chown "$uid:$uid" /home/nonroot && chmod 0750 /home/nonroot

# Keep it small: no docs (but licences), man pages, translations, caches or logs.
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
rm -rf /usr/share/man /usr/share/info /usr/share/locale/* /usr/share/lintian \
  /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/* \
  /root/.cache "$wheels"

# Refuse to finish an image that carries build tools.
for tool in pip pip3 gcc cc c++ g++ clang ld make; do
  if command -v "$tool" >/dev/null 2>&1; then
    echo "install.sh: $tool is in the image; it must not be" >&2
    exit 1
  fi
done
python3 - <<'EOF'
import importlib.util, sys
left = [m for m in ("pip", "setuptools", "wheel", "ensurepip") if importlib.util.find_spec(m)]
sys.exit(f"install.sh: python modules {left} are in the image; they must not be" if left else 0)
EOF
armyctl --version
