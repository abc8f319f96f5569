# Prepares a checkout to run: headless MuJoCo rendering and a Python virtual environment.
# Sourced by launch/train.sh and launch/test.sh. Exports MUJOCO_GL and VENV (the venv path);
# sets DREAMER_ROOT (the repository root). Idempotent, and fast when everything is in place.
#
#   source launch/bootstrap.sh || exit 1

DREAMER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_dreamer_say() { printf 'bootstrap: %s\n' "$*" >&2; }

# Runs a command as root: directly when root, through passwordless sudo otherwise.
_dreamer_as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}

_dreamer_gl_backend() {
  local libs mesa=""
  libs="$(ldconfig -p 2>/dev/null)"
  # EGL needs the GLVND loader plus a vendor driver: NVIDIA's, or Mesa's with its DRI drivers
  # (software rendering when there is no GPU).
  if grep -q 'libEGL_mesa\.so\.0 ' <<<"$libs" && { grep -q 'libgallium' <<<"$libs" \
      || compgen -G '/usr/lib*/*/dri/*_dri.so' >/dev/null || compgen -G '/usr/lib*/dri/*_dri.so' >/dev/null; }; then
    mesa=1
  fi
  if grep -q 'libEGL\.so\.1 ' <<<"$libs" && { [ -n "$mesa" ] || grep -q 'libEGL_nvidia\.so\.0 ' <<<"$libs"; }; then
    echo egl
  elif grep -q 'libOSMesa\.so' <<<"$libs"; then
    echo osmesa
  fi
}

_dreamer_setup_gl() {
  if [ -n "${MUJOCO_GL:-}" ]; then  # the user's choice wins
    export MUJOCO_GL
    return 0
  fi
  if [ "$(uname -s)" = Darwin ]; then  # MuJoCo renders with CGL on macOS; nothing to set
    return 0
  fi
  local backend packages="libegl1 libegl-mesa0 libgl1-mesa-dri"
  backend="$(_dreamer_gl_backend)"
  if [ -z "$backend" ]; then
    _dreamer_say "installing EGL for headless MuJoCo rendering ($packages)"
    if command -v apt-get >/dev/null 2>&1 && _dreamer_as_root env DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -qq && apt-get install -y -qq $packages >/dev/null"; then
      backend="$(_dreamer_gl_backend)"
    fi
  fi
  if [ -z "$backend" ]; then
    _dreamer_say "headless MuJoCo rendering needs EGL (or OSMesa), and it could not be installed."
    _dreamer_say "run:  sudo apt-get update && sudo apt-get install -y $packages"
    _dreamer_say "or set MUJOCO_GL yourself (egl, osmesa or glfw)."
    return 1
  fi
  export MUJOCO_GL="$backend"
}

_dreamer_find_python() {
  local py
  for py in python3.11 python3.12 python3.13 python3; do
    if command -v "$py" >/dev/null 2>&1 \
        && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"
      return 0
    fi
  done
  return 1
}

_dreamer_setup_venv() {
  export VENV="$DREAMER_ROOT/.venv"
  local py stamp="$VENV/.dreamer-installed" hash
  if [ ! -x "$VENV/bin/python" ]; then
    if ! py="$(_dreamer_find_python)"; then
      _dreamer_say "needs Python 3.11 or newer (tried python3.11, python3.12, python3.13, python3)."
      return 1
    fi
    _dreamer_say "creating $VENV with $py"
    if ! "$py" -m venv "$VENV"; then
      _dreamer_say "could not create the virtual environment; on Debian/Ubuntu install the venv"
      _dreamer_say "module first, e.g.  sudo apt-get install -y python3-venv  (or python3.11-venv)"
      return 1
    fi
  fi
  hash="$("$VENV/bin/python" -c \
    'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
    "$DREAMER_ROOT/pyproject.toml")" || return 1
  if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
    _dreamer_say "installing dreamer and its dependencies into $VENV (the first time takes minutes)"
    # pip's build warnings are noise on success; on failure the whole log is shown.
    local log="$VENV/.dreamer-install.log"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check \
        -e "$DREAMER_ROOT[test]" >"$log" 2>&1; then
      cat "$log" >&2
      _dreamer_say "pip install failed (log above, also in $log)"
      return 1
    fi
    printf '%s\n' "$hash" >"$stamp"
  fi
}

_dreamer_setup_gl && _dreamer_setup_venv
