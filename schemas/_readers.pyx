# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Reading the hot paths' records, compiled: UsageEvent bodies in LAYOUT (schemas.codecs), which
the stream app, replay and inspect decode every event through, and WindowAggregate bodies in
AGGREGATE_LAYOUT, which the sinks read (in Python a 50-byte aggregate cost ~6.7 µs, half of the
ClickHouse sink's time per row); and the stream app's first look at each event read (triage).

fastavro reads a batch's events at ~4.2 µs each and building the UsageEvent records costs another
~1.3 µs; this reads them straight into the records at ~0.8 µs (BENCHMARKS.md, issue 3). Python
cannot do the same: a hand-written Python reader runs at fastavro's speed, the cost being one
interpreted step per byte field. Every read is bounds-checked against the record's length, so bad
bytes raise ValueError (UnicodeDecodeError for bad UTF-8), never read past the buffer.
tests/unit/test_codecs.py pins both to fastavro on generated records and on damaged bytes, and
to their Python forms (schemas.codecs.read_events, read_aggregate: the fallback where no C
compiler was at install).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport INT32_MAX, INT32_MIN, UINT16_MAX, UINT32_MAX, int64_t, uint64_t
from libc.string cimport memcmp, memcpy

from dataclasses import fields
from types import MemberDescriptorType

from meterline.schemas.records import UsageEvent, WindowAggregate

# The records are built without their __init__ (a frozen dataclass's __init__ sets each field
# through object.__setattr__, a third of the cost of reading an event, and ~3.4 µs of an
# aggregate's ~0.4 here): so this must set exactly their fields.
_FIELDS = ("event_id", "customer_id", "meter", "quantity", "unit", "timestamp", "source", "attributes")
if tuple(f.name for f in fields(UsageEvent)) != _FIELDS:
    raise ImportError(f"schemas._readers sets the fields {_FIELDS}; UsageEvent has others")


_AGGREGATE_FIELDS = (
    "customer_id",
    "meter",
    "window_start",
    "window_end",
    "source_partition",
    "value",
    "delta",
    "event_count",
    "revision",
    "closed_at",
)
if tuple(f.name for f in fields(WindowAggregate)) != _AGGREGATE_FIELDS:
    raise ImportError(f"schemas._readers sets the fields {_AGGREGATE_FIELDS}; WindowAggregate has others")


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member


cdef extern from "structmember.h":
    int T_OBJECT_EX  # the type of a __slots__ entry


cdef Py_ssize_t[8] _EVENT_SLOTS  # where each of _FIELDS sits in a UsageEvent, in _FIELDS' order
cdef Py_ssize_t[10] _AGGREGATE_SLOTS  # the same of _AGGREGATE_FIELDS in a WindowAggregate


cdef _find_slots(type record, tuple names, Py_ssize_t* offsets):
    """The records' fields are stored straight into their __slots__, at the offsets their member
    descriptors give: what object.__setattr__ does after looking the descriptor up by name, which
    was 15% of an event's read (1.31-1.39 -> 1.10-1.19 µs, the two read alternately in one
    process). Checked here, once: each field a slot holding an object."""
    for i, name in enumerate(names):
        descriptor = record.__dict__.get(name)
        if type(descriptor) is not MemberDescriptorType:
            raise ImportError(f"schemas._readers stores {record.__name__}.{name} in its slot; it has none")
        member = (<PyMemberDescrObject*>descriptor).d_member
        if member.type != T_OBJECT_EX:
            raise ImportError(f"schemas._readers stores an object in {record.__name__}.{name}; its slot is not one")
        offsets[i] = member.offset


_find_slots(UsageEvent, _FIELDS, _EVENT_SLOTS)
_find_slots(WindowAggregate, _AGGREGATE_FIELDS, _AGGREGATE_SLOTS)


cdef inline void _store(object record, Py_ssize_t offset, object value):
    """Into a slot of a record just made (so empty: nothing to release)."""
    Py_INCREF(value)
    (<PyObject**>((<char*><PyObject*>record) + offset))[0] = <PyObject*>value


cdef inline int64_t _long(const unsigned char* data, Py_ssize_t* pos, Py_ssize_t end) except? -1:
    """An Avro long (zig-zag varint) at pos[0]; advances pos."""
    cdef uint64_t zigzag = 0
    cdef int shift = 0
    cdef unsigned char byte
    cdef Py_ssize_t i = pos[0]
    while True:
        if i >= end:
            raise ValueError("the record ends inside a long")
        byte = data[i]
        i += 1
        if shift == 63 and byte > 1:
            raise ValueError("an Avro long of more than 64 bits")
        zigzag |= <uint64_t>(byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    pos[0] = i
    return <int64_t>(zigzag >> 1) ^ -<int64_t>(zigzag & 1)


cdef inline Py_ssize_t _span(const unsigned char* data, Py_ssize_t* pos, Py_ssize_t end) except -1:
    """Where an Avro string's bytes start; pos advances past them (their length is checked)."""
    cdef int64_t length = _long(data, pos, end)
    cdef Py_ssize_t start = pos[0]
    if length < 0 or length > end - start:
        raise ValueError(f"a string of {length} bytes where {end - start} remain")
    pos[0] = start + length
    return start


cdef inline str _string(const unsigned char* data, Py_ssize_t* pos, Py_ssize_t end):
    cdef Py_ssize_t start = _span(data, pos, end)
    return PyUnicode_DecodeUTF8(<const char*>data + start, pos[0] - start, NULL)


# Strings that recur from event to event (customers, meters, units, sources, attributes) are
# decoded once and the same str handed out again: on live traffic an event's read went from 1.54
# to 1.09 µs, and the stream app's window dicts then find their keys by identity (its fold per
# event 2.80 -> 2.56 µs; BENCHMARKS.md, issue 18). A fixed table, so bounded: a string whose slot
# is taken replaces the one there.
cdef enum:
    _RECURRING_SLOTS = 4096  # a power of two: the slot is the hash's low bits
    _RECURRING_BYTES = 48  # longer strings are decoded each time


cdef struct _Recurring:
    Py_ssize_t length
    PyObject* text  # owned: one reference held by the table
    unsigned char data[_RECURRING_BYTES]


cdef _Recurring _recurring[_RECURRING_SLOTS]


cdef inline str _recurring_string(const unsigned char* data, Py_ssize_t* pos, Py_ssize_t end):
    """As _string, from the table when these bytes were decoded last time their slot was used."""
    cdef Py_ssize_t start = _span(data, pos, end)
    cdef Py_ssize_t length = pos[0] - start
    cdef Py_ssize_t i
    cdef uint64_t hash = 14695981039346656037u  # FNV-1a
    if length > _RECURRING_BYTES:
        return PyUnicode_DecodeUTF8(<const char*>data + start, length, NULL)
    for i in range(length):
        hash = (hash ^ data[start + i]) * 1099511628211u
    cdef _Recurring* slot = &_recurring[hash & (_RECURRING_SLOTS - 1)]
    if slot.text is not NULL and slot.length == length and memcmp(slot.data, data + start, length) == 0:
        return <str>slot.text
    text = PyUnicode_DecodeUTF8(<const char*>data + start, length, NULL)  # raises on bad UTF-8
    Py_INCREF(text)
    Py_XDECREF(slot.text)
    slot.text = <PyObject*>text
    slot.length = length
    memcpy(slot.data, data + start, length)
    return text


cdef inline int64_t _block_count(const unsigned char* data, Py_ssize_t* pos, Py_ssize_t end) except? -1:
    """The item count of an array or map block; a negative count is followed by the block's size
    in bytes, which a reader may skip over (the Avro spec)."""
    cdef int64_t count = _long(data, pos, end)
    if count < 0:
        if count == -count:  # the most negative long has no positive
            raise ValueError("a block count of -2**63")
        _long(data, pos, end)
        return -count
    return count


cdef object _event(const unsigned char* data, Py_ssize_t* pos, Py_ssize_t end):
    cdef dict attributes = {}
    cdef int64_t count, i
    event = object.__new__(UsageEvent)
    _store(event, _EVENT_SLOTS[0], _string(data, pos, end))
    _store(event, _EVENT_SLOTS[1], _recurring_string(data, pos, end))
    _store(event, _EVENT_SLOTS[2], _recurring_string(data, pos, end))
    _store(event, _EVENT_SLOTS[3], _long(data, pos, end))
    _store(event, _EVENT_SLOTS[4], _recurring_string(data, pos, end))
    _store(event, _EVENT_SLOTS[5], _long(data, pos, end))
    _store(event, _EVENT_SLOTS[6], _recurring_string(data, pos, end))
    _store(event, _EVENT_SLOTS[7], attributes)
    count = _block_count(data, pos, end)
    while count:
        for i in range(count):
            key = _recurring_string(data, pos, end)
            attributes[key] = _recurring_string(data, pos, end)
        count = _block_count(data, pos, end)
    return event


def read_events(bytes data, Py_ssize_t pos, bint batch):
    """The events of a body starting at `pos` and ending at the end of `data`: a UsageEventBatch's
    array of events when `batch`, else one UsageEvent. ValueError when the bytes are not that."""
    cdef const unsigned char* buffer = data
    cdef Py_ssize_t end = len(data)
    cdef int64_t count, i
    cdef list events = []
    if pos < 0 or pos > end:
        raise ValueError(f"position {pos} outside a record of {end} bytes")
    if batch:
        count = _block_count(buffer, &pos, end)
        while count:
            for i in range(count):
                events.append(_event(buffer, &pos, end))
            count = _block_count(buffer, &pos, end)
    else:
        events.append(_event(buffer, &pos, end))
    if pos != end:
        raise ValueError(f"{end - pos} trailing bytes after the record")
    return events


def new_aggregate(
    customer_id, meter, window_start, window_end, source_partition, value, delta, event_count, revision, closed_at
):
    """WindowAggregate(...), the same record, without its __init__: what the stream app builds at
    every close, and the sinks at every read."""
    aggregate = object.__new__(WindowAggregate)
    _store(aggregate, _AGGREGATE_SLOTS[0], customer_id)
    _store(aggregate, _AGGREGATE_SLOTS[1], meter)
    _store(aggregate, _AGGREGATE_SLOTS[2], window_start)
    _store(aggregate, _AGGREGATE_SLOTS[3], window_end)
    _store(aggregate, _AGGREGATE_SLOTS[4], source_partition)
    _store(aggregate, _AGGREGATE_SLOTS[5], value)
    _store(aggregate, _AGGREGATE_SLOTS[6], delta)
    _store(aggregate, _AGGREGATE_SLOTS[7], event_count)
    _store(aggregate, _AGGREGATE_SLOTS[8], revision)
    _store(aggregate, _AGGREGATE_SLOTS[9], closed_at)
    return aggregate


cdef struct _Aggregate:
    Py_ssize_t customer, customer_length, meter, meter_length  # where the strings' bytes are
    int64_t window_start, window_end, partition, value, delta, count, revision, closed_at


cdef tuple _read_aggregate(const unsigned char* buffer, Py_ssize_t pos, Py_ssize_t end, _Aggregate* out):
    """A WindowAggregate body in AGGREGATE_LAYOUT from `pos` to `end` into `out`, checked as Avro
    (UTF-8 strings, 32-bit ints, nothing after it): what both readers below read. Returns its two
    strings, each decoded once (the decoding is the UTF-8 check)."""
    if pos < 0 or pos > end:
        raise ValueError(f"position {pos} outside a record of {end} bytes")
    out.customer = _span(buffer, &pos, end)
    out.customer_length = pos - out.customer
    customer_id = PyUnicode_DecodeUTF8(<const char*>buffer + out.customer, out.customer_length, NULL)
    out.meter = _span(buffer, &pos, end)
    out.meter_length = pos - out.meter
    meter = PyUnicode_DecodeUTF8(<const char*>buffer + out.meter, out.meter_length, NULL)
    out.window_start = _long(buffer, &pos, end)
    out.window_end = _long(buffer, &pos, end)
    out.partition = _long(buffer, &pos, end)
    out.value = _long(buffer, &pos, end)
    out.delta = _long(buffer, &pos, end)
    out.count = _long(buffer, &pos, end)
    out.revision = _long(buffer, &pos, end)
    out.closed_at = _long(buffer, &pos, end)
    if pos != end:
        raise ValueError(f"{end - pos} trailing bytes after the record")
    if not (INT32_MIN <= out.partition <= INT32_MAX and INT32_MIN <= out.revision <= INT32_MAX):
        raise ValueError("an int field out of Avro's 32-bit range")
    return customer_id, meter


def read_aggregate(bytes data, Py_ssize_t pos):
    """The fields of a WindowAggregate body in AGGREGATE_LAYOUT starting at `pos` and ending at
    the end of `data`, as a tuple in that layout's order (WindowAggregate's). ValueError when the
    bytes are not one."""
    cdef const unsigned char* buffer = data
    cdef _Aggregate a
    customer_id, meter = _read_aggregate(buffer, pos, len(data), &a)
    return (
        customer_id,
        meter,
        a.window_start,
        a.window_end,
        a.partition,
        a.value,
        a.delta,
        a.count,
        a.revision,
        a.closed_at,
    )


cdef inline Py_ssize_t _uvarint_size(uint64_t n):
    cdef Py_ssize_t size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


cdef inline char* _put_string(char* out, const unsigned char* data, Py_ssize_t start, Py_ssize_t length):
    """RowBinary's String: the length as an unsigned LEB128 varint, then the bytes."""
    cdef uint64_t n = <uint64_t>length
    while n >= 0x80:
        out[0] = <char>(n & 0x7F | 0x80)
        out += 1
        n >>= 7
    out[0] = <char>n
    memcpy(out + 1, data + start, length)
    return out + 1 + length


cdef inline char* _put_le(char* out, uint64_t n, int width):
    cdef int i
    for i in range(width):
        out[i] = <char>(n >> (8 * i) & 0xFF)
    return out + width


def read_aggregate_row_binary(bytes data, Py_ssize_t pos):
    """A WindowAggregate body in AGGREGATE_LAYOUT starting at `pos`, as one RowBinary row of
    ClickHouse's usage_window_revisions in that order, with the types of
    schemas.codecs.AGGREGATE_ROW_BINARY (the ClickHouse sink inserts these bytes as they are).
    ValueError when the bytes are not an aggregate (as read_aggregate), or a field does not fit
    its column's type."""
    cdef const unsigned char* buffer = data
    cdef _Aggregate a
    _read_aggregate(buffer, pos, len(data), &a)
    if not 0 <= a.partition <= UINT16_MAX:
        raise ValueError(f"source_partition {a.partition} does not fit UInt16")
    if a.count < 0:
        raise ValueError(f"event_count {a.count} does not fit UInt64")
    if not 0 <= a.revision <= UINT32_MAX:
        raise ValueError(f"revision {a.revision} does not fit UInt32")
    cdef Py_ssize_t size = (
        _uvarint_size(a.customer_length) + a.customer_length + _uvarint_size(a.meter_length) + a.meter_length + 54
    )
    row = PyBytes_FromStringAndSize(NULL, size)
    cdef char* out = PyBytes_AS_STRING(row)
    out = _put_string(out, buffer, a.customer, a.customer_length)
    out = _put_string(out, buffer, a.meter, a.meter_length)
    out = _put_le(out, <uint64_t>a.window_start, 8)
    out = _put_le(out, <uint64_t>a.window_end, 8)
    out = _put_le(out, <uint64_t>a.partition, 2)
    out = _put_le(out, <uint64_t>a.value, 8)
    out = _put_le(out, <uint64_t>a.delta, 8)
    out = _put_le(out, <uint64_t>a.count, 8)
    out = _put_le(out, <uint64_t>a.revision, 4)
    _put_le(out, <uint64_t>a.closed_at, 8)
    return row


cdef inline object _field(object record, Py_ssize_t offset):
    """A field of a record, read from its slot."""
    cdef PyObject* value = (<PyObject**>((<char*><PyObject*>record) + offset))[0]
    if value is NULL:  # only a record made by object.__new__ and never filled
        raise AttributeError(f"a {type(record).__name__} without one of its fields")
    return <object>value


def triage(list events, dict meter_units, dict filters, earliest, latest, list billable, list non_billable):
    """schemas.validation.triage, its fields read straight from the events' slots: the same
    expression as check_event's and the same bounds. Reading them by name took as long as the
    interpreter's loop (2.07-2.22 µs an event for the judge either way; 1.66-1.76 from the slots,
    alternating in one process). tests/unit/test_judge.py pins both to the rules one by one."""
    cdef list rejected = []
    cdef Py_ssize_t index
    for index in range(len(events)):
        event = events[index]
        if type(event) is not UsageEvent:
            raise TypeError(f"triage reads UsageEvents, not {type(event).__name__}")
        meter = _field(event, _EVENT_SLOTS[2])
        unit = _field(event, _EVENT_SLOTS[4])
        timestamp = _field(event, _EVENT_SLOTS[5])
        if (
            _field(event, _EVENT_SLOTS[0])
            and _field(event, _EVENT_SLOTS[1])
            and meter
            and unit
            and _field(event, _EVENT_SLOTS[6])
            and timestamp > 0
            and _field(event, _EVENT_SLOTS[3]) >= 0
            and meter_units.get(meter) == unit
            and earliest <= timestamp <= latest
        ):
            rule = filters[meter]
            if rule is None or rule(_field(event, _EVENT_SLOTS[7])):
                billable.append(event)
            else:
                non_billable.append(event)
        else:
            rejected.append(index)
    return rejected
