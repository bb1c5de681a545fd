# One image for every ledgergate process; docker-compose.yml picks the process
# with its command (`ledgergate run <service>`, `ledgergate topics apply`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
COPY client/ client/
COPY shared/ shared/
COPY services/ services/
COPY tools/ tools/
COPY schemas/ schemas/
COPY deploy/ deploy/

# Installed in place (editable): the folders map onto the one import name
# `ledgergate` (docs/decisions/0005-one-import-name.md), and
# ledgergate.shared.settings finds deploy/ (migrations, broker config) beside
# them in /app. It gives the `ledgergate` entry point and the pinned
# dependencies; the in-tree build leftovers are not needed afterwards.
RUN pip install --no-cache-dir -e . \
    && rm -rf build ./*.egg-info

# Nothing needs root at run time. A fixed uid keeps file ownership
# predictable if someone bind-mounts a directory into the container.
RUN useradd --create-home --uid 10001 --user-group ledgergate
USER ledgergate

CMD ["ledgergate", "--help"]
