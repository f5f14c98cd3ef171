# meterline's own image, used by docker-compose.yml for the worker and the sink.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
# The server extra: the SDK alone (`pip install .`) has neither the worker nor the sink.
RUN pip install --no-cache-dir '.[server]'
ENTRYPOINT ["meterline"]
