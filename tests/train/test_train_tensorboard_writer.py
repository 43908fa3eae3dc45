"""The hand-written TensorBoard writer: CRC-32C, record framing, and the Event protobuf
checked with an independent protobuf decoder built from the tensorflow.Event schema."""
import pytest

from cxrjax.train.tensorboard import ScalarWriter, crc32c, read_records


def test_crc32c_known_vector():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c(b"") == 0


def _event_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="tbtest", syntax="proto3")
    value = f.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=9, label=1)  # string
    value.field.add(name="simple_value", number=2, type=2, label=1)  # float
    summary = f.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=11, label=3, type_name=".tbtest.Value")
    event = f.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=1, label=1)  # double
    event.field.add(name="step", number=2, type=3, label=1)  # int64
    event.field.add(name="file_version", number=3, type=9, label=1)
    event.field.add(name="summary", number=5, type=11, label=1, type_name=".tbtest.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tbtest.Event"))


def test_event_file_decodes_as_tensorflow_events(tmp_path):
    writer = ScalarWriter(tmp_path)
    writer.scalars(7, {"train_loss": 0.25, "val_accuracy": 0.5})
    writer.scalars(300, {"train_loss": 0.125})
    records = read_records(writer.path)
    Event = _event_class()
    events = [Event.FromString(r) for r in records]
    assert events[0].file_version == "brain.Event:2"
    assert [e.step for e in events[1:]] == [7, 300]
    assert {v.tag: v.simple_value for v in events[1].summary.value} == {"train_loss": 0.25, "val_accuracy": 0.5}
    assert events[2].summary.value[0].simple_value == pytest.approx(0.125)
    assert writer.path.name.startswith("events.out.tfevents.")
