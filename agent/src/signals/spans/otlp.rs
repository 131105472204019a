//! The OTLP messages the agent sends and reads, as prost structs written from the published
//! definitions (opentelemetry-proto, `opentelemetry/proto/collector/trace/v1/
//! trace_service.proto`, `trace/v1/trace.proto`, `common/v1/common.proto`,
//! `resource/v1/resource.proto`). Only the fields the agent fills are declared: protobuf
//! readers skip what they do not know, and a field left out here is simply never sent.
//! Field numbers and types must match the definitions exactly; the integration tests
//! decode what the agent sends with the official Python bindings. Spans are not built as
//! these structs: the exporter writes their bytes with [`wire`], and its unit tests check
//! those bytes against prost's encoding of the same `ExportTraceServiceRequest`.

/// `ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `ExportTraceServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportTracePartialSuccess>,
}

/// `ExportTracePartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTracePartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected_spans: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `ResourceSpans`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `ScopeSpans`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `InstrumentationScope`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `Span`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// `Span.SpanKind`: 2 server, 3 client.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
    /// `SpanFlags`: the W3C trace flags in the low byte, and whether the parent is remote.
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
}

pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;
pub const STATUS_CODE_ERROR: i32 = 2;
/// `SPAN_FLAGS_TRACE_FLAGS_MASK`'s sampled bit.
pub const SPAN_FLAGS_SAMPLED: u32 = 0x01;
/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`.
pub const SPAN_FLAGS_HAS_IS_REMOTE: u32 = 0x100;
/// `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
pub const SPAN_FLAGS_IS_REMOTE: u32 = 0x200;

/// `Status` (field 1 is reserved).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// `KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 3")]
    pub value: Option<Value>,
}

/// `AnyValue.value`: only the kinds the agent sends.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(string, tag = "1")]
    StringValue(String),
    #[prost(int64, tag = "3")]
    IntValue(i64),
}

impl KeyValue {
    pub fn string(key: &str, value: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
        }
    }

    pub fn int(key: &str, value: i64) -> Self {
        Self {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(value)),
            }),
        }
    }
}

/// The protobuf wire format, written straight into a buffer: what the span exporter
/// encodes with, so that a batch becomes its request's bytes without building the
/// messages above first (they stay for decoding, and as the tests' reference: the bytes
/// written here are the bytes prost writes for the same messages, fields in tag order and
/// proto3 defaults left out where prost leaves them out).
pub mod wire {
    /// Wire types (protobuf encoding, "Message Structure").
    pub const VARINT: u32 = 0;
    pub const FIXED64: u32 = 1;
    pub const LEN: u32 = 2;
    pub const FIXED32: u32 = 5;

    #[inline]
    pub fn varint(buf: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            buf.push(value as u8 | 0x80);
            value >>= 7;
        }
        buf.push(value as u8);
    }

    /// Bytes the varint of `value` takes.
    #[inline]
    pub fn varint_len(value: u64) -> usize {
        // 1 byte per 7 significant bits, at least 1.
        (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
    }

    #[inline]
    pub fn key(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
        varint(buf, u64::from(field << 3 | wire_type));
    }

    /// A `bytes` or `string` field (written even when empty: callers leave out what
    /// prost leaves out).
    #[inline]
    pub fn bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
        key(buf, field, LEN);
        varint(buf, value.len() as u64);
        buf.extend_from_slice(value);
    }

    #[inline]
    pub fn fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&value.to_le_bytes());
    }

    #[inline]
    pub fn fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&value.to_le_bytes());
    }

    /// An `int32` or `int64` field: negative values take ten bytes, as the format says.
    #[inline]
    pub fn int64(buf: &mut Vec<u8>, field: u32, value: i64) {
        key(buf, field, VARINT);
        varint(buf, value as u64);
    }

    /// A length-delimited field whose body is being written: [`begin`] writes its key and
    /// sets bytes aside for the length, [`Open::end`] writes the length there.
    #[must_use]
    pub struct Open {
        /// Where the length goes.
        at: usize,
        /// Bytes set aside for it: a guess at the body's size, the usual size of the
        /// message; a wrong guess costs one move of the body.
        reserved: usize,
    }

    #[inline]
    pub fn begin(buf: &mut Vec<u8>, field: u32, reserved: usize) -> Open {
        key(buf, field, LEN);
        let at = buf.len();
        buf.resize(at + reserved, 0);
        Open { at, reserved }
    }

    impl Open {
        #[inline]
        pub fn end(self, buf: &mut Vec<u8>) {
            let body = self.at + self.reserved;
            let len = buf.len() - body;
            let needed = varint_len(len as u64);
            if needed != self.reserved {
                // Move the body to where the length's real size puts it.
                let end = buf.len();
                if needed > self.reserved {
                    buf.resize(end + needed - self.reserved, 0);
                }
                buf.copy_within(body..end, self.at + needed);
                buf.truncate(self.at + needed + len);
            }
            let mut value = len as u64;
            for byte in &mut buf[self.at..self.at + needed] {
                *byte = value as u8 | 0x80;
                value >>= 7;
            }
            buf[self.at + needed - 1] &= 0x7f;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lengths_are_minimal_varints_whatever_was_reserved() {
            for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_152] {
                for reserved in 0..4 {
                    let mut buf = vec![0xee];
                    let open = begin(&mut buf, 2, reserved);
                    buf.extend(std::iter::repeat_n(0xab, len));
                    open.end(&mut buf);
                    let mut expected = vec![0xee];
                    bytes(&mut expected, 2, &vec![0xab; len]);
                    assert!(buf == expected, "len {len}, reserved {reserved}");
                }
            }
            for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
                let mut buf = Vec::new();
                varint(&mut buf, v);
                assert_eq!(buf.len(), varint_len(v), "{v}");
            }
        }
    }
}

// Metrics (`collector/metrics/v1/metrics_service.proto`, `metrics/v1/metrics.proto`):
// what `signals::otlp_metrics` pushes. Summaries and exponential histograms are not
// declared: the agent sends neither.

/// `ExportMetricsServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

/// `ExportMetricsServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsServiceResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportMetricsPartialSuccess>,
}

/// `ExportMetricsPartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsPartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected_data_points: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `ResourceMetrics`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `ScopeMetrics`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeMetrics {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(string, tag = "3")]
    pub unit: String,
    #[prost(oneof = "MetricData", tags = "5, 7, 9")]
    pub data: Option<MetricData>,
}

/// `Metric.data`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricData {
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    #[prost(message, tag = "7")]
    Sum(Sum),
    #[prost(message, tag = "9")]
    Histogram(Histogram),
}

/// `Gauge`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

/// `Sum`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sum {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
    #[prost(bool, tag = "3")]
    pub is_monotonic: bool,
}

/// `Histogram`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
}

/// `AggregationTemporality`.
pub const AGGREGATION_TEMPORALITY_DELTA: i32 = 1;
pub const AGGREGATION_TEMPORALITY_CUMULATIVE: i32 = 2;

/// `NumberDataPoint` (always `as_double`, a member of the `value` oneof: optional here so
/// that a zero is still sent; Prometheus values are doubles).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NumberDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(double, optional, tag = "4")]
    pub as_double: Option<f64>,
}

/// `HistogramDataPoint`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramDataPoint {
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    pub count: u64,
    #[prost(double, optional, tag = "5")]
    pub sum: Option<f64>,
    #[prost(fixed64, repeated, tag = "6")]
    pub bucket_counts: Vec<u64>,
    #[prost(double, repeated, tag = "7")]
    pub explicit_bounds: Vec<f64>,
    #[prost(message, repeated, tag = "8")]
    pub exemplars: Vec<Exemplar>,
}

/// `Exemplar`: one measurement with the span it was made in (`as_double`, a member of
/// the `value` oneof).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(fixed64, tag = "2")]
    pub time_unix_nano: u64,
    #[prost(double, optional, tag = "3")]
    pub as_double: Option<f64>,
    #[prost(bytes = "vec", tag = "4")]
    pub span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub trace_id: Vec<u8>,
}
