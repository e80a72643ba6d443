#!/usr/bin/env bash
# Install ClipMemCap on a fresh Debian/Ubuntu machine: system tools, then a virtual environment
# in .venv with torch/torchvision, the project (editable) and its test tools.
#   TORCH_PACKAGES  the torch pair to install first (default: "torch==2.14.1 torchvision==0.29.1")
set -euo pipefail
cd "$(dirname "$0")/.."

# ffmpeg/ffprobe decode the videos; a Java runtime runs the METEOR and PTB-tokenizer evaluators.
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null || ! command -v java >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq ffmpeg default-jre-headless >/dev/null
fi

python3 -m venv .venv
# torch and torchvision go in first, as a matching pair: open_clip imports torchvision, and a
# torchvision built for another torch fails at import ("operator torchvision::nms does not exist").
# shellcheck disable=SC2086
.venv/bin/pip install -q ${TORCH_PACKAGES:-torch==2.14.1 torchvision==0.29.1}
# constraints.txt pins every other package to the versions that made the committed results.
.venv/bin/pip install -q -c constraints.txt -e '.[dev]'
# DVC runs each stage's command (`python -m ...`) in a shell that sees only the user's PATH. This
# puts .venv/bin first on the PATH of every process a program of this venv starts (what `source
# .venv/bin/activate` does for a shell), so `.venv/bin/dvc repro` works without an activated venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/venv_bin_on_path.pth "$site/"
.venv/bin/python -c "import torch, torchvision, open_clip, prefect, dvc, yt_dlp; print('clipmemcap installed: torch', torch.__version__)"
