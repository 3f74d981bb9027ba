#!/usr/bin/env bash
# Builds the virtual environments the parity tests run the official reward packages in:
#   bash tests/parity/make_envs.sh [ENVS_DIR]     (default: .venv-parity, git-ignored)
# One base environment holds torch + torchvision (several GB, installed once); each official
# package gets its own environment that sees the base's packages through a .pth file, so their
# pinned dependencies (protobuf<4, transformers 4.45.2, timm 0.6.13, ...) never meet. For each
# requirements/NAME.txt: NAME.nodeps.txt is then installed with --no-deps and NAME.post.py run, if
# present. A requirements file with the line "# parity-base: none" gets an environment of its own
# (it installs its own torch, e.g. an older torchvision era) instead of the base's packages. An
# environment is rebuilt when its requirements file is newer than it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${1:-.venv-parity}
python=${PYTHON:-python3}
mkdir -p "$root"

# PyPI's torchvision only loads against a matching torch build; these pairs run on the CPU.
case "$(uname -m)" in
  x86_64) torch_pins="torch==2.14.1 torchvision==0.29.1" ;;
  aarch64 | arm64) torch_pins="torch==2.9.1 torchvision==0.24.1" ;;
  *) echo "make_envs.sh: no known torch/torchvision pair for $(uname -m)" >&2; exit 1 ;;
esac

site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

if [ ! -f "$root/base/.installed" ]; then
  echo "parity: building $root/base ($torch_pins)"
  rm -rf "$root/base"
  "$python" -m venv "$root/base"
  # shellcheck disable=SC2086
  "$root/base/bin/pip" install -q $torch_pins
  touch "$root/base/.installed"
fi
base_site=$(site_of "$root/base")

for requirements in "$here"/requirements/*.txt; do
  case "$requirements" in *.nodeps.txt) continue ;; esac
  name=$(basename "$requirements" .txt)
  env="$root/$name"
  if [ -f "$env/.installed" ] && [ "$env/.installed" -nt "$requirements" ]; then
    continue
  fi
  echo "parity: building $env"
  rm -rf "$env"
  "$python" -m venv "$env"
  if ! grep -qx '# parity-base: none' "$requirements"; then
    echo "$base_site" > "$(site_of "$env")/_parity_base.pth"
  fi
  "$env/bin/pip" install -q -r "$requirements"
  nodeps="${requirements%.txt}.nodeps.txt"
  if [ -f "$nodeps" ]; then "$env/bin/pip" install -q --no-deps -r "$nodeps"; fi
  post="${requirements%.txt}.post.py"
  if [ -f "$post" ]; then "$env/bin/python" "$post"; fi
  touch "$env/.installed"
done

# Official code that is no package (GenEval's rules and summary; test_parity_geneval.py runs
# these files with stand-ins for their detector and CLIP): cloned at pinned commits from
# $PARITY_GIT_BASE (default https://github.com; a folder of local clones works too, as
# PARITY_GIT_BASE=/path holding djghosh13/geneval, ...). Where no clone can be made (a machine
# without GitHub, as CI's), the GenEval parity test is skipped and says why; nothing else fails.
git_base=${PARITY_GIT_BASE:-https://github.com}
clone() {
  local dir="$root/src/$1"
  if [ "$(git -C "$dir" rev-parse HEAD 2>/dev/null)" != "$3" ]; then
    echo "parity: cloning $git_base/$2 at $3"
    rm -rf "$dir"
    if ! git clone -q "$git_base/$2" "$dir" 2>/dev/null || ! git -C "$dir" checkout -q "$3"; then
      rm -rf "$dir"
      echo "parity: could not clone $git_base/$2 at $3: its parity test will be skipped" >&2
    fi
  fi
}
clone geneval djghosh13/geneval af4902f24d3ca90ebbb446dd9891a59e0f82725f
clone reward-server yifan123/reward-server 92ac29fb322c028f8840db8f93c950422931710d
