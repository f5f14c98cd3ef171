"""`python -m meterline.processors`: run the Faust worker (same as `meterline worker`)."""

from meterline.processors.worker import run_worker

run_worker()
