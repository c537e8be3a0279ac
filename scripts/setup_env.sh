#!/usr/bin/env bash
# Create .venv (Python 3.11) with every dependency, build the interfaces package into it with
# cmake, and install pixelrefer_ros in editable mode. Safe to re-run; `make` calls it once.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing Python dependencies (requirements.txt)"
# pip prints a harmless 'Location ... is ignored' line per local index on these machines.
"$VENV/bin/pip" install --disable-pip-version-check -q -r requirements.txt 2>&1 \
  | { grep -v "Location 'file:" || true; }

echo "[setup] building pixelrefer_ros_interfaces with cmake into $VENV"
BUILD=$ROOT/build/pixelrefer_ros_interfaces
mkdir -p "$ROOT/build"
# CMAKE_PREFIX_PATH/AMENT_PREFIX_PATH point at the venv only while building: the ROS wheels
# install their cmake configs and ament index there.
PATH=$VENV/bin:$PATH CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV \
  cmake -S msg -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF > "$ROOT/build/interfaces_configure.log" 2>&1 \
  || { cat "$ROOT/build/interfaces_configure.log"; exit 1; }
PATH=$VENV/bin:$PATH CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV \
  cmake --build "$BUILD" -j2 > "$ROOT/build/interfaces_build.log" 2>&1 \
  || { tail -50 "$ROOT/build/interfaces_build.log"; exit 1; }
cmake --install "$BUILD" > /dev/null

echo "[setup] installing pixelrefer_ros (editable)"
"$VENV/bin/pip" install --disable-pip-version-check -q --no-deps --no-build-isolation -e . 2>&1 \
  | { grep -v "Location 'file:" || true; }

"$VENV/bin/python" -c "import rclpy, torch, pixelrefer_ros_interfaces.srv, pixelrefer_ros; \
print('[setup] ok: torch', torch.__version__)"
