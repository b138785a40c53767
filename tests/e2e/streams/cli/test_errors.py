"""Mistakes at the command line end in one clear line on stderr and status 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.brokers import Broker

from streams.broker import free_port
from streams.cli.main import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err.strip()


def test_produce_names_the_line_that_is_not_json(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"upload_id": "u-1", "target_image_url": "http://a/b.png", "sources": []}\n{"upload_id": \n')

    status, err = _run(["produce", "--broker", broker.url, "--topic", "cli-errors-a", str(events)], capsys)

    assert status == 2
    assert err.startswith(f"tagstream: {events} line 2: not JSON: ") and "\n" not in err


def test_produce_names_the_line_that_is_no_upload_event(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"upload_id": "u-1", "sources": []}\n')

    status, err = _run(["produce", "--broker", broker.url, "--topic", "cli-errors-b", str(events)], capsys)

    assert status == 2
    assert err.startswith(f"tagstream: {events} line 1: not an ImageUploaded event: ")
    assert "target_image_url" in err and "\n" not in err


def test_produce_with_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, err = _run(["produce", str(tmp_path / "nowhere.jsonl")], capsys)

    assert status == 2
    assert err == f"tagstream: cannot read {tmp_path / 'nowhere.jsonl'}: No such file or directory"


@pytest.mark.parametrize("command", ["produce", "tail"])
def test_a_wrong_broker_is_one_line(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"upload_id": "u-1", "target_image_url": "http://a/b.png", "sources": []}\n')
    wrong = f"kafka://127.0.0.1:{free_port()}"
    argv = (
        ["produce", "--broker", wrong, str(events)]
        if command == "produce"
        else ["tail", "--broker", wrong, "--topic", "x"]
    )

    status, err = _run(argv, capsys)

    assert status == 2
    assert err.startswith("tagstream: cannot reach the Kafka broker (") and "\n" not in err


def test_tail_of_a_topic_that_does_not_exist(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _run(["tail", "--broker", broker.url, "--topic", "cli-errors-no-such-topic"], capsys)

    assert status == 2
    assert err == "tagstream: topic 'cli-errors-no-such-topic' does not exist on the broker"
