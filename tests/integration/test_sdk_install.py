"""The SDK as a service team installs it: `pip install meterline` alone, in a fresh virtualenv.

Built from this checkout into a wheel, installed with its own dependencies only (from PyPI, or
pip's cache), then used from that virtualenv against the real broker.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from meterline.benchmarks.installed import install_checkout
from meterline.settings import Settings
from meterline.stack import ensure_topics
from tests.integration.test_producer_sdk import consume_all

SERVER_DISTRIBUTIONS = {"faust-streaming", "aiokafka", "chdb", "clickhouse-connect", "uvloop", "quixstreams", "mode-streaming",
                        "rich"}
# What any virtualenv holds before the SDK: not the SDK's size.
VENV_TOOLS = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth")
MAX_SDK_BYTES = 40 * 1024 * 1024


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding the meterline wheel and its base dependencies, nothing else."""
    return install_checkout(tmp_path_factory.mktemp("sdk"))


def _run(venv: Path, *command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    # Run outside this checkout: from here, `python -c` would import the source tree's `meterline`.
    return subprocess.run([str(venv / "bin" / command[0]), *command[1:]], capture_output=True, text=True,
                          timeout=120, cwd=venv.parent, **kwargs)  # type: ignore[call-overload]


def test_the_sdk_installs_without_the_server_side_and_stays_small(sdk_venv: Path) -> None:
    listed = json.loads(_run(sdk_venv, "pip", "list", "--format", "json").stdout)
    installed = {package["name"].lower() for package in listed}
    assert "meterline" in installed and "confluent-kafka" in installed
    assert not installed & SERVER_DISTRIBUTIONS, f"server packages in the SDK: {installed & SERVER_DISTRIBUTIONS}"
    (site,) = (sdk_venv / "lib").glob("python3*/site-packages")
    size = sum(path.stat().st_size for entry in site.iterdir() if not entry.name.startswith(VENV_TOOLS)
               for path in ([entry] if entry.is_file() else entry.rglob("*")) if path.is_file())
    print(f"installed size of the SDK and its dependencies: {size / 2**20:.1f} MiB")
    assert size < MAX_SDK_BYTES, f"the SDK takes {size / 2**20:.1f} MiB installed"


def test_the_sdk_alone_emits_to_the_real_broker(sdk_venv: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    ensure_topics(settings)
    program = (
        "import sys\n"
        "from meterline.producers import Meter\n"
        "with Meter(bootstrap=sys.argv[1], usage_topic=sys.argv[2], spool_dir=sys.argv[3]) as meter:\n"
        "    print(meter.emit('acme', 'user-1', 'gpt-4o', 1200, 340))\n"
    )
    done = _run(sdk_venv, "python", "-c", program, settings.kafka_bootstrap, settings.usage_topic,
                str(settings.home / "sdk-spool"), env={"PATH": "/usr/bin:/bin", "HOME": str(settings.home)})
    assert done.returncode == 0, done.stderr
    request_id = done.stdout.strip()
    (event,) = consume_all(settings, 1)
    assert event["id"] == request_id
    assert event["_key"] == b"acme/user-1"
    assert event["data"]["input_tokens"] == 1200 and event["data"]["output_tokens"] == 340


def test_the_sdk_alone_runs_meterline_emit(sdk_venv: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    ensure_topics(settings)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(settings.home), "METERLINE_BOOTSTRAP": settings.kafka_bootstrap,
           "METERLINE_USAGE_TOPIC": settings.usage_topic}
    done = _run(sdk_venv, "meterline", "emit", "--org", "acme", "--user", "user-2", "--model", "gpt-4o-mni",
                "--input-tokens", "10", "--output-tokens", "5", env=env)
    assert done.returncode == 0, done.stderr
    assert "warning: model 'gpt-4o-mni' is not in the price book" in done.stderr  # markup removed, words kept
    (event,) = consume_all(settings, 1)
    assert event["id"] == done.stdout.strip() and event["data"]["model"] == "gpt-4o-mni"
    lines = sdk_venv.parent / "events.jsonl"
    lines.write_text('{"org_id": "acme", "user_id": "u", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}\n'
                     '{"org_id": "acme", "user_id": "u", "model": "gpt-4o", "input_tokens": -1, "output_tokens": 1}\n')
    done = _run(sdk_venv, "meterline", "emit", "--file", str(lines), env=env)
    assert done.returncode == 1, done.stderr
    assert "1 rejected" in done.stderr and "line 2: " in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("command", "extra"), [(("worker",), "server"), (("sink",), "server"),
                                                (("pricing", "quote", "--model", "gpt-4o", "--input-tokens", "1",
                                                  "--output-tokens", "1"), "cli")])
def test_a_command_of_an_extra_names_the_extra_to_install(sdk_venv: Path, tmp_path: Path, command: tuple[str, ...],
                                                          extra: str) -> None:
    done = _run(sdk_venv, "meterline", *command, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert f"pip install 'meterline[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr
