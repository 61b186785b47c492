#!/usr/bin/env bash
# Downloads, here, the cp312 manylinux wheels that benchmarks/gpu_check.py needs on the GPU machine and that
# its image lacks (Python 3.12, torch 2.11, Lightning 2.6, timm, torchmetrics, OpenCV, ONNX Runtime, einops;
# no albumentations, jsonargparse, wandb, pycocotools). There they install without a registry:
#   python3 -m pip install -q --no-index --no-deps --disable-pip-version-check --target /tmp/wh wheels/*.whl
# and run with PYTHONPATH=src:/tmp/wh (see the top of gpu_check.py). Everything sent there (the work tree
# plus wheels/) must stay under 64 MiB; the total is printed.
#
# What and why (versions: pyproject.toml's pins, else the ones the project's venv resolved):
#   jsonargparse + docstring-parser, typeshed-client   LightningCLI (`geosapiens fit`) needs the [signatures]
#                                                      extra: Lightning checks that those packages are there
#   albumentations + albucore, stringzilla, simsimd,   the photometric augmentation of the data path; albumentations
#   pydantic, pydantic-core, annotated-types,          imports scipy and pydantic when imported, albucore imports
#   typing-inspection, scipy                           stringzilla and simsimd
#   typing-extensions                                  pydantic-core 2.50 needs >= 4.16; the image's may be older
#   lightning(-utilities), timm, torchmetrics          pure Python, 4.5 MB: the project's pins win over the
#                                                      image's (unknown patch versions; `lightning.pytorch` is
#                                                      there even if the image has pytorch-lightning only), so
#                                                      torch 2.11 is the one thing that differs from the tests
# Not carried: wandb (gpu_check logs with CSVLogger; nothing imports wandb on its path), pycocotools and
# matplotlib (only `evaluate`/TestResultsWriter and the visualisations import them, not gpu_check's path).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf wheels
mkdir -p wheels
# the local extra indexes hold no cp312 wheels: their "location is ignored" warnings go to a log
python3 -m pip download --quiet --python-version 3.12 --only-binary=:all: --no-deps \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --implementation cp -d wheels/ \
    jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 \
    albumentations==2.0.8 albucore==0.0.24 stringzilla==5.3.2 simsimd==6.5.16 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 scipy==1.17.1 \
    lightning==2.6.6 lightning-utilities==0.15.3 timm==1.0.31 torchmetrics==1.9.0 \
    2>wheels/pip.log || { cat wheels/pip.log >&2; exit 1; }
rm wheels/pip.log
ls -l wheels/
wheels=$(du -cb wheels/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
echo "wheels: $((wheels / 1024)) KiB; tracked work tree: $((tree / 1024)) KiB; sent: $(((wheels + tree) / 1024)) KiB of 65536 KiB"
if (( wheels + tree > 60 * 1024 * 1024 )); then
    echo "error: over 60 MiB, too close to the 64 MiB a run can carry" >&2
    exit 1
fi
