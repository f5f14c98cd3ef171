"""The faust-streaming processor: validate, dedupe on request id, roll up credits per user."""
