#!/usr/bin/env bash
# Fetch (here, where pip reaches the package registries) the wheels that gpu_check.sh installs on the GPU
# machine, which has no internet: scvi-tools 1.4.2 and what it imports that the machine's image lacks, for its
# Python 3.12. pandas 2 (with pytz and tzdata) goes in .whl/pandas2: anndata 0.12 needs pandas < 3, and
# gpu_check.sh installs it only where the machine's pandas is newer. docrep has no wheel: it is built here.
# Then:  device run "bash benchmarks/gpu_check.sh \$OUT" with carry [".whl"]  (about 27 MB).
set -euo pipefail
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
download=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"${download[@]}" -d .whl scvi-tools==1.4.2 anndata==0.12.19 mudata==0.3.10 scanpy==1.11.5 pyro-ppl==1.9.2 \
    pyro-api==0.1.2 ml_collections==1.1.0 sparse==0.19.3 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 \
    google-crc32c==1.9.0 array-api-compat==1.16.0 legacy-api-wrap==1.5 natsort==8.4.0 scverse-misc==0.0.3 \
    session-info2==0.4.1 umap-learn pynndescent dask==2026.8.0 partd locket
python3 -m pip wheel -q --no-deps -w .whl docrep==0.3.2
"${download[@]}" -d .whl/pandas2 pandas==2.3.3 pytz tzdata
du -sh .whl
