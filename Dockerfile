# One image for every ledgergate process; docker-compose.yml picks the process
# with its command (`ledgergate run <service>`, `ledgergate topics apply`).
FROM python:3.11-slim

# PYTHONPATH: shared/settings.py locates schemas/ and deploy/ relative to the
# imported package (PROJECT_ROOT). Importing from the copied tree in /app,
# rather than from the copy pip puts in site-packages, keeps that lookup
# pointing at the directory where they actually are.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
COPY schemas/ schemas/
COPY deploy/ deploy/

# Installing the project gives the `ledgergate` entry point and the pinned
# dependencies; the in-tree build leftovers are not needed afterwards.
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info

# Nothing needs root at run time. A fixed uid keeps file ownership
# predictable if someone bind-mounts a directory into the container.
RUN useradd --create-home --uid 10001 --user-group ledgergate
USER ledgergate

CMD ["ledgergate", "--help"]
