# One image for every dicom-wm service (scp, worker, migrations).
#   docker build -t dicom-wm .                      # CPU
#   docker build --build-arg EXTRAS=learned -t dicom-wm:gpu .   # + torch for the gpu queue
FROM python:3.11-slim-bookworm

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DICOM_WM_DATA_DIR=/data \
    DICOM_WM_MIGRATIONS=/app/migrations

# dcmtk: echoscu for the health check (and storescu/findscu for operators)
RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY dicom_wm ./dicom_wm
COPY scp ./scp
COPY workers ./workers
COPY migrations ./migrations
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

RUN useradd --system --uid 10001 --home-dir /data dicomwm \
 && mkdir -p /data && chown dicomwm /data
USER dicomwm
VOLUME ["/data"]
EXPOSE 11112

ENTRYPOINT ["dicom-wm"]
CMD ["serve", "--host", "0.0.0.0", "--port", "11112"]
