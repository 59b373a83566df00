#!/bin/sh
# Run inside the image builds (docker/*.Dockerfile): copies SRC's workspace to OUT with every
# manifest and Cargo.lock as they are and every .rs file replaced by a stub, so that building
# OUT compiles exactly the dependencies. The result changes only when a manifest or the lock
# file does, so the layer cache keeps the dependency build across source edits.
#
# usage: skeleton.sh SRC OUT
set -eu
src=$1
out=$2
mkdir -p "$out"
cd "$src"

for file in Cargo.toml Cargo.lock rust-toolchain.toml rust-toolchain; do
  [ -f "$file" ] && cp "$file" "$out/"
done
[ -d .cargo ] && cp -R .cargo "$out/"

# Every crate under the root (the workspace members and whatever they point at by path).
find . -mindepth 2 -path ./target -prune -o -name Cargo.toml -print | while read -r manifest; do
  crate=$(dirname "$manifest")
  mkdir -p "$out/$crate"
  cp "$manifest" "$out/$crate/"
  # One stub serves every role a .rs file can have: a library root, a binary, a build script.
  find "$crate" -path "$crate/target" -prune -o -name '*.rs' -print | while read -r source; do
    mkdir -p "$out/$(dirname "$source")"
    printf '#![allow(dead_code)]\nfn main() {}\n' >"$out/$source"
  done
done
