# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Writing the stream worker's aggregates, compiled: a WindowAggregate body in AGGREGATE_LAYOUT
(schemas.codecs), which the worker writes for every window it closes and replay never does. In
Python its ten varints cost ~8% of the worker on sparse usage, more than the whole decoding of
the events (BENCHMARKS.md, issue 18). tests/unit/test_codecs.py pins it to fastavro and to its
Python form (schemas.codecs.AggregateEncoder: the fallback where no C compiler was at install),
refusals included.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport INT32_MAX, INT32_MIN, int64_t, uint64_t
from libc.string cimport memcpy

cdef object _LONG_MIN = -(1 << 63)
cdef object _LONG_MAX = (1 << 63) - 1


cdef inline Py_ssize_t _put_varint(unsigned char* out, uint64_t n):
    cdef Py_ssize_t i = 0
    while n > 0x7F:
        out[i] = <unsigned char>(n & 0x7F | 0x80)
        n >>= 7
        i += 1
    out[i] = <unsigned char>n
    return i + 1


cdef inline Py_ssize_t _put_long(unsigned char* out, object value) except -1:
    """Avro's long (zig-zag, then a varint), refused as schemas.codecs.encode_long refuses it."""
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise ValueError(f"{value} does not fit Avro's 64-bit long")
    cdef int64_t n = value
    return _put_varint(out, (<uint64_t>n << 1) ^ <uint64_t>(n >> 63))


cdef inline Py_ssize_t _put_int(unsigned char* out, object value) except -1:
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{value} does not fit Avro's 32-bit int")
    return _put_long(out, value)


def write_aggregate(aggregate):
    """The body of `aggregate` (a WindowAggregate) in AGGREGATE_LAYOUT, as
    schemas.codecs.AggregateEncoder writes it. ValueError when a number does not fit its field."""
    cdef bytes customer = aggregate.customer_id.encode()
    cdef bytes meter = aggregate.meter.encode()
    cdef unsigned char customer_length[10]
    cdef unsigned char meter_length[10]
    cdef unsigned char numbers[80]  # eight varints of at most ten bytes each
    cdef Py_ssize_t customer_size = _put_varint(customer_length, <uint64_t>len(customer) << 1)
    cdef Py_ssize_t meter_size = _put_varint(meter_length, <uint64_t>len(meter) << 1)
    cdef Py_ssize_t n = 0
    n += _put_long(numbers + n, aggregate.window_start)
    n += _put_long(numbers + n, aggregate.window_end)
    n += _put_int(numbers + n, aggregate.source_partition)
    n += _put_long(numbers + n, aggregate.value)
    n += _put_long(numbers + n, aggregate.delta)
    n += _put_long(numbers + n, aggregate.event_count)
    n += _put_int(numbers + n, aggregate.revision)
    n += _put_long(numbers + n, aggregate.closed_at)
    cdef Py_ssize_t size = customer_size + len(customer) + meter_size + len(meter) + n
    body = PyBytes_FromStringAndSize(NULL, size)
    cdef char* out = PyBytes_AS_STRING(body)
    memcpy(out, customer_length, customer_size)
    out += customer_size
    memcpy(out, <const char*>customer, len(customer))
    out += len(customer)
    memcpy(out, meter_length, meter_size)
    out += meter_size
    memcpy(out, <const char*>meter, len(meter))
    out += len(meter)
    memcpy(out, numbers, n)
    return body
