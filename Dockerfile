# slaops: one image for every service (`slaops consume`, `slaops retrain`, ...).
#
#   docker build -t slaops .
#   docker run --rm slaops consume --help
#
# Settings come from the environment (SLAOPS_*, KAFKA_BOOTSTRAP_SERVERS, HF_TOKEN,
# HF_ENDPOINT) or from flags after the subcommand; see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned, from PyTorch's CPU-only index and on its own: a bare `torch`
# requirement resolved from PyPI would pull a multi-GB CUDA build. `pip install .` below
# then finds `torch>=2.10` already satisfied. Never add the PyTorch index as an extra
# index beside PyPI: pip would take whichever index offers the "best" torch.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The services run as an unprivileged user whose home holds the local state (.slaops,
# the Hub cache).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin slaops

# The project with the dask extra (the compose file's search workers); not `embedded`:
# the compose file runs Apache Kafka, not the embedded broker.
WORKDIR /src
COPY . .
RUN pip install '.[dask]' && cd / && rm -rf /src

USER slaops
WORKDIR /home/slaops

ENTRYPOINT ["slaops"]
CMD ["--help"]
