"""JSON lines to a file or standard output ("-"): the local sink for demos and replays.

Writes go through a buffered file opened in append mode; each batch is written
and flushed in a worker thread so a slow disk never blocks the event loop, and
``fsync`` (optional) makes a batch durable before it counts as delivered.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError
from pipeline.models import Item
from sinks._items import encoded
from sinks.base import SendResult
from sinks.config import JsonLinesSinkConfig


def encode_lines(batch: Sequence[Item]) -> bytes:
    return b"".join(encoded(item) + b"\n" for item in batch)


class JsonLinesSink:
    def __init__(self, config: JsonLinesSinkConfig) -> None:
        self.name = config.name
        self.path = config.path
        self.fsync = config.fsync
        self._file: IO[bytes] | None = None
        self._lock = asyncio.Lock()

    def _open(self) -> IO[bytes]:
        if self._file is None:
            if self.path == "-":
                self._file = sys.stdout.buffer
            else:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab", buffering=1 << 16)  # noqa: SIM115
        return self._file

    def _write(self, data: bytes) -> None:
        handle = self._open()
        handle.write(data)
        handle.flush()
        if self.fsync and self.path != "-":
            os.fsync(handle.fileno())

    async def send(self, batch: Sequence[Item]) -> SendResult:
        data = encode_lines(batch)
        async with self._lock:  # lines of concurrent batches never interleave
            try:
                await asyncio.to_thread(self._write, data)
            except OSError as exc:
                return SendResult.all_retry(batch, f"io_error: {exc}")
        return SendResult.all_delivered(batch)

    async def healthcheck(self) -> None:
        if self.path == "-":
            return
        try:
            await asyncio.to_thread(self._open)
        except OSError as exc:
            raise ConfigError(f"cannot open {self.path} for appending: {exc}",
                              reason="sink_unavailable", component=self.name) from exc

    async def aclose(self) -> None:
        async with self._lock:
            if self._file is not None and self.path != "-":
                handle = self._file
                await asyncio.to_thread(handle.close)
            self._file = None


def build(config: JsonLinesSinkConfig, ctx: RuntimeContext) -> JsonLinesSink:
    return JsonLinesSink(config)
