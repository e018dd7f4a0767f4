"""Where each partition's windows start, recorded durably before every commit.

Rebuilding a tenant's window after a restart or rebalance means replaying its partition
from the oldest event the window still held. Kafka commit metadata could carry that
offset, but tansu drops it and its `offsets_for_times` is wrong, so the consumer writes
a small keyed record to a compacted topic before each commit. Each record also carries
the previous checkpoint, so a crash between writing a checkpoint and committing still
leaves the checkpoint of the last commit to be found, even after compaction.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Annotated, Final

from confluent_kafka import KafkaException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kernel.errors import BrokerError
from kernel.kafka import DeliveryTracker, assign_from_start, is_record, make_reader, position

log = logging.getLogger(__name__)


#: A checkpoint record is ~150 bytes; anything much larger is not one of ours.
MAX_CHECKPOINT_BYTES: Final = 1_024
#: Kafka offsets are signed 64-bit; the negative ones are logical (-1 is the END of a
#: partition on Apache Kafka, -2 the beginning), never a position a window starts at.
_MAX_OFFSET: Final = 2**63 - 1
Offset = Annotated[int, Field(ge=0, le=_MAX_OFFSET)]


class PartitionCheckpoint(BaseModel):
    """One partition's checkpoint, as read back from Kafka: every field bounds-checked.

    Anyone who can write to the checkpoint topic can write one, so a record that is not
    a possible checkpoint (a negative offset, a replay start after the committed offset)
    is refused: replaying from -1 would skip from the commit to the partition's end.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    topic: Annotated[str, Field(min_length=1, max_length=249)]
    partition: Annotated[int, Field(ge=0, le=2**31 - 1)]
    committed_offset: Offset
    replay_from: Offset
    previous: tuple[Offset, Offset] | None = None  # (committed_offset, replay_from) before

    @model_validator(mode="after")
    def _ordered(self) -> PartitionCheckpoint:
        if self.replay_from > self.committed_offset:
            raise ValueError("replay_from is after committed_offset")
        if self.previous is not None and self.previous[1] > self.previous[0]:
            raise ValueError("previous replay_from is after its committed_offset")
        return self


def checkpoint_key(group_id: str, topic: str, partition: int) -> bytes:
    return f"{group_id}|{topic}|{partition}".encode()


def choose_replay_from(latest: PartitionCheckpoint | None, committed: int) -> int:
    """The offset to replay from so the windows at `committed` are rebuilt in full.

    Replaying from too early only costs time; too late would lose window events.
    """
    if committed < 0:
        raise ValueError(f"committed offset {committed} is not a position")
    if latest is None:
        return committed
    if latest.committed_offset == committed:
        return min(latest.replay_from, committed)
    if latest.previous is not None and latest.previous[0] == committed:
        return min(latest.previous[1], committed)
    candidates = [latest.replay_from, committed]
    if latest.previous is not None:
        candidates.append(latest.previous[1])
    log.warning(
        "checkpoint of partition=%d does not match committed offset %d; replaying from the "
        "earliest known window start",
        latest.partition,
        committed,
        extra={"partition": latest.partition},
    )
    return min(candidates)


def read_checkpoint(value: bytes, topic: str, partition: int) -> PartitionCheckpoint | None:
    """The checkpoint in a record keyed for (`topic`, `partition`), or None if it is not one.

    Refused (and logged, without the value): an oversized record, one that does not
    parse or is out of bounds, and one whose body names another topic or partition than
    its key. A refused record is skipped, so the newest valid checkpoint before it
    counts; with none, the partition replays from its committed offset.
    """
    if len(value) > MAX_CHECKPOINT_BYTES:
        log.warning(
            "ignoring an oversized checkpoint of partition=%d (%d bytes)",
            partition,
            len(value),
            extra={"partition": partition},
        )
        return None
    try:
        checkpoint = PartitionCheckpoint.model_validate_json(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<value>'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:3]
        )
        log.warning(
            "ignoring an invalid checkpoint of partition=%d: %s",
            partition,
            problems,
            extra={"partition": partition},
        )
        return None
    if (checkpoint.topic, checkpoint.partition) != (topic, partition):
        log.warning(
            "ignoring a checkpoint keyed for partition=%d that names another topic or partition",
            partition,
            extra={"partition": partition},
        )
        return None
    return checkpoint


class CheckpointLog:
    """Writes and reads partition checkpoints on the (single-partition) checkpoint topic."""

    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        tracker: DeliveryTracker,
        reader_config: dict[str, object],
        read_timeout_s: float = 60.0,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self._tracker = tracker
        self._reader_config = reader_config
        self._read_timeout_s = read_timeout_s
        self._last: dict[tuple[str, int], PartitionCheckpoint] = {}

    def write(self, topic: str, partition: int, committed_offset: int, replay_from: int) -> None:
        """Queue a checkpoint; the caller waits on the tracker before committing."""
        previous = self._last.get((topic, partition))
        if previous is not None and (previous.committed_offset, previous.replay_from) == (
            committed_offset,
            replay_from,
        ):
            return
        checkpoint = PartitionCheckpoint(
            topic=topic,
            partition=partition,
            committed_offset=committed_offset,
            replay_from=replay_from,
            previous=None
            if previous is None
            else (previous.committed_offset, previous.replay_from),
        )
        self._produce(checkpoint)
        self._last[(topic, partition)] = checkpoint

    def rewrite(self, topic: str, partition: int) -> None:
        """Queue the newest checkpoint of `partition` again: its delivery failed."""
        checkpoint = self._last.get((topic, partition))
        if checkpoint is not None:
            self._produce(checkpoint)

    def _produce(self, checkpoint: PartitionCheckpoint) -> None:
        self._tracker.produce(
            self.topic,
            key=checkpoint_key(self.group_id, checkpoint.topic, checkpoint.partition),
            value=checkpoint.model_dump_json().encode(),
            partition=0,
        )

    def forget(self, topic: str, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._last.pop((topic, partition), None)

    def read_latest(self, topic: str, partitions: Iterable[int]) -> dict[int, PartitionCheckpoint]:
        """The newest checkpoint of each partition.

        High watermarks are not trusted (tansu's are wrong), so the end of the log is
        marked by producing a sentinel and reading up to its acknowledged offset.
        """
        wanted = {checkpoint_key(self.group_id, topic, p): p for p in partitions}
        if not wanted:
            return {}
        end = self._write_sentinel()
        reader = make_reader(self._reader_config, f"{self.group_id}.checkpoint-reader")
        found: dict[int, PartitionCheckpoint] = {}
        try:
            assign_from_start(reader, [(self.topic, 0)])
            deadline = time.monotonic() + self._read_timeout_s
            read_to = -1
            while read_to < end:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"checkpoint topic {self.topic} not readable up to offset {end}"
                    )
                for message in reader.consume(10_000, 0.5):
                    if not is_record(message):
                        continue
                    read_to = max(read_to, position(message)[1])
                    partition = wanted.get(message.key() or b"")
                    value = message.value()
                    if partition is None or not value:
                        continue
                    checkpoint = read_checkpoint(value, topic, partition)
                    if checkpoint is not None:
                        found[partition] = checkpoint
        except KafkaException as exc:
            raise BrokerError(f"cannot read checkpoint topic {self.topic}: {exc}") from exc
        finally:
            reader.close()
        for partition, checkpoint in found.items():
            self._last[(topic, partition)] = checkpoint
        return found

    def _write_sentinel(self) -> int:
        offsets: list[int] = []

        def delivered(err: object, message: object) -> None:
            if err is None:
                offsets.append(message.offset())  # type: ignore[attr-defined]

        producer = self._tracker.producer
        producer.produce(
            self.topic,
            key=f"{self.group_id}|sentinel|{uuid.uuid4().hex}".encode(),
            value=None,
            partition=0,
            on_delivery=delivered,
        )
        producer.flush(self._read_timeout_s)
        if not offsets:
            raise BrokerError(f"cannot write to checkpoint topic {self.topic}")
        return offsets[0]
