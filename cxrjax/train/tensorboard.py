"""A minimal TensorBoard event-file writer for scalars, without TensorFlow or tensorboard.

TensorBoard reads ``events.out.tfevents.*`` files: a sequence of TFRecords, each
``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``,
whose data is a serialized ``tensorflow.Event`` protobuf. Scalars need only a handful
of protobuf fields, encoded here by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

Open with ``tensorboard --logdir <workdir>/tensorboard`` (S3 used TensorBoard logs).
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

_CRC_TABLE: list[int] = []


def _crc_table() -> list[int]:
    if not _CRC_TABLE:
        for i in range(256):
            crc = i
            for _ in range(8):
                crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
            _CRC_TABLE.append(crc)
    return _CRC_TABLE


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    table = _crc_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, scalars: dict[str, float] | None = None, file_version: str | None = None) -> bytes:
    event = _varint((1 << 3) | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        event += _length_delimited(3, file_version.encode())
    if scalars:
        summary = b""
        for tag, value in scalars.items():
            value_msg = _length_delimited(1, tag.encode()) + _varint((2 << 3) | 5) + struct.pack("<f", float(value))
            summary += _length_delimited(1, value_msg)
        event += _length_delimited(5, summary)
    return event


def encode_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def read_records(path: str | Path) -> list[bytes]:
    """The data of every record in an event file, checking both CRCs (for tests and tools)."""
    blob = Path(path).read_bytes()
    records, pos = [], 0
    while pos < len(blob):
        (length,) = struct.unpack_from("<Q", blob, pos)
        (length_crc,) = struct.unpack_from("<I", blob, pos + 8)
        if length_crc != masked_crc32c(blob[pos : pos + 8]):
            raise ValueError(f"{path}: corrupt record length at byte {pos}")
        data = blob[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack_from("<I", blob, pos + 12 + length)
        if data_crc != masked_crc32c(data):
            raise ValueError(f"{path}: corrupt record data at byte {pos}")
        records.append(data)
        pos += 12 + length + 4
    return records


class ScalarWriter:
    """Append scalars to ``<logdir>/events.out.tfevents.<time>.<host>`` (one file per session)."""

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = self.logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.cxrjax"
        with open(self.path, "ab") as f:
            f.write(encode_record(encode_event(now, 0, file_version="brain.Event:2")))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if v is not None}
        with open(self.path, "ab") as f:
            f.write(encode_record(encode_event(time.time(), step, scalars=finite)))
