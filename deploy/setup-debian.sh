#!/usr/bin/env bash
# Installs everything building and testing Hazina needs on a fresh Debian machine. Run as root.
# Safe to run again: it installs only what is missing.
set -euo pipefail

packages=()
command -v cc >/dev/null 2>&1 || packages+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || packages+=(pkg-config)
# RocksDB's Rust bindings generate their FFI with bindgen, which needs libclang.
dpkg -s libclang-dev >/dev/null 2>&1 || packages+=(libclang-dev)
command -v clang >/dev/null 2>&1 || packages+=(clang)
if ((${#packages[@]})); then
  echo "setup: installing ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
# rust-toolchain.toml pins the compiler; make sure rustup has it.
cd "$(dirname "$0")/.."
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
echo "setup: done ($(rustc --version))"
