#!/usr/bin/env bash
# Make sure a built-in dataset is on disk. Order: already present (Debian path,
# $MODELZIP_DATA or modelzip's download cache) -> Debian package via apt ->
# torchvision download -> a clear message saying what to do.
set -uo pipefail
name="${1:-fashion-mnist}"
debian="/usr/share/datasets/$name"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/modelzip/data/$name"

present() { [ -n "$(ls "$1" 2>/dev/null)" ]; }

for dir in "$debian" "${MODELZIP_DATA:-/nonexistent}/$name" "$cache"; do
  if present "$dir"; then echo "data: $name found in $dir"; exit 0; fi
done

if command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
    echo "data: installing Debian package dataset-$name"
    $sudo apt-get update -qq >/dev/null 2>&1
    if $sudo apt-get install -y -qq "dataset-$name" >/dev/null 2>&1 && present "$debian"; then
      echo "data: $name installed in $debian"; exit 0
    fi
  fi
fi

echo "data: trying torchvision's download into $cache"
if .venv/bin/python -m modelzip.sources.download "$name" "$cache"; then exit 0; fi

cat >&2 <<MSG
data: $name is not available.
  tried: $debian (apt-get install dataset-$name), \$MODELZIP_DATA/$name, $cache, and a download.
  fix:   install the Debian package dataset-$name, or put the idx files in \$MODELZIP_DATA/$name,
         or run where the network reaches the dataset's mirrors.
MSG
exit 1
