# meterline's own image, used by docker-compose.yml for the worker and the sink.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir .
ENTRYPOINT ["meterline"]
