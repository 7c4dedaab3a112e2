//! Serdes: typed keys and values to and from Kafka's nullable bytes, with the
//! byte layouts of Java's `org.apache.kafka.common.serialization` classes so
//! that a Java (or any other) client reads what we write and the other way
//! round.
//!
//! A [`Serde`] maps one Rust type, its [`Serde::Target`], to `Option<Bytes>`
//! (Kafka's nullable bytes). The built-ins never produce `None` and refuse a
//! Kafka null with [`SerdeError::Null`]; wrap one in [`Nullable`] to map
//! `None` to and from a Kafka null (a tombstone value, a record without a key).
//! Decoding never panics: bad bytes are a [`SerdeError`].

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::processor::Data;

/// Why bytes could not be turned into a value (or a value into bytes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SerdeError {
    /// A fixed-size type got a payload of another size (Java's
    /// `SerializationException: Size of data received by ... is not 8`).
    #[error("{type_name}: expected {expected} bytes, got {actual}")]
    Length {
        type_name: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A Kafka null where this serde needs bytes; use [`Nullable`] to accept it.
    #[error("{type_name}: null bytes (wrap the serde in Nullable to accept Kafka nulls)")]
    Null { type_name: &'static str },
    /// `Void` data that was not null.
    #[error("Void: expected null bytes, got {actual} bytes")]
    NotNull { actual: usize },
    #[error("invalid UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A user serde's own failure.
    #[error("{0}")]
    Custom(String),
}

/// Serializes and deserializes one type to and from Kafka's nullable bytes.
///
/// `topic` is the topic the bytes come from or go to, as in Java's
/// `Serializer.serialize(topic, data)`; the built-ins ignore it.
pub trait Serde: Send + Sync + 'static {
    /// The Rust type this serde reads and writes.
    type Target: Data;

    fn serialize(&self, topic: &str, value: &Self::Target) -> Result<Option<Bytes>, SerdeError>;

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Self::Target, SerdeError>;
}

fn required<'a>(data: Option<&'a [u8]>, type_name: &'static str) -> Result<&'a [u8], SerdeError> {
    data.ok_or(SerdeError::Null { type_name })
}

fn fixed<const N: usize>(
    data: Option<&[u8]>,
    type_name: &'static str,
) -> Result<[u8; N], SerdeError> {
    let bytes = required(data, type_name)?;
    bytes.try_into().map_err(|_| SerdeError::Length {
        type_name,
        expected: N,
        actual: bytes.len(),
    })
}

/// Raw bytes, unchanged (Java's `BytesSerde`/`ByteArraySerde`).
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesSerde;

impl Serde for BytesSerde {
    type Target = Bytes;

    fn serialize(&self, _topic: &str, value: &Bytes) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(value.clone()))
    }

    fn deserialize(&self, _topic: &str, data: Option<&[u8]>) -> Result<Bytes, SerdeError> {
        Ok(Bytes::copy_from_slice(required(data, "Bytes")?))
    }
}

/// UTF-8 text (Java's `StringSerde` with its default encoding, UTF-8).
/// Invalid UTF-8 is an error, where Java would substitute U+FFFD.
#[derive(Debug, Clone, Copy, Default)]
pub struct StringSerde;

impl Serde for StringSerde {
    type Target = String;

    fn serialize(&self, _topic: &str, value: &String) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(Bytes::copy_from_slice(value.as_bytes())))
    }

    fn deserialize(&self, _topic: &str, data: Option<&[u8]>) -> Result<String, SerdeError> {
        Ok(std::str::from_utf8(required(data, "String")?)?.to_owned())
    }
}

/// The value Java writes: `Double.doubleToLongBits` collapses every NaN to
/// the canonical one (`0x7ff8000000000000`); `Float.floatToRawIntBits` and
/// the integers write what they are given.
trait JavaBits: Copy {
    fn as_java_writes(self) -> Self {
        self
    }
}

impl JavaBits for i32 {}
impl JavaBits for i64 {}
impl JavaBits for f32 {}
impl JavaBits for f64 {
    fn as_java_writes(self) -> Self {
        if self.is_nan() { f64::NAN } else { self }
    }
}

macro_rules! big_endian_serde {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $java:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl Serde for $name {
            type Target = $ty;

            fn serialize(&self, _topic: &str, value: &$ty) -> Result<Option<Bytes>, SerdeError> {
                Ok(Some(Bytes::copy_from_slice(&value.as_java_writes().to_be_bytes())))
            }

            fn deserialize(&self, _topic: &str, data: Option<&[u8]>) -> Result<$ty, SerdeError> {
                Ok(<$ty>::from_be_bytes(fixed(data, $java)?))
            }
        }
    };
}

big_endian_serde!(
    /// 4 bytes, big-endian two's complement (Java's `IntegerSerde`).
    I32Serde, i32, "Integer"
);
big_endian_serde!(
    /// 8 bytes, big-endian two's complement (Java's `LongSerde`).
    I64Serde, i64, "Long"
);
big_endian_serde!(
    /// 4 bytes, IEEE 754 big-endian (Java's `FloatSerde`, `floatToRawIntBits`).
    F32Serde, f32, "Float"
);
big_endian_serde!(
    /// 8 bytes, IEEE 754 big-endian (Java's `DoubleSerde`,
    /// `doubleToLongBits`: every NaN is written as the canonical one).
    F64Serde, f64, "Double"
);

/// Always null (Java's `VoidSerde`): for keys or values that carry nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct VoidSerde;

impl Serde for VoidSerde {
    type Target = ();

    fn serialize(&self, _topic: &str, _value: &()) -> Result<Option<Bytes>, SerdeError> {
        Ok(None)
    }

    fn deserialize(&self, _topic: &str, data: Option<&[u8]>) -> Result<(), SerdeError> {
        match data {
            None => Ok(()),
            Some(bytes) => Err(SerdeError::NotNull {
                actual: bytes.len(),
            }),
        }
    }
}

/// JSON through `serde_json`, for any `Serialize + DeserializeOwned` type
/// (the layout of Kafka Connect's `JsonConverter` without schemas, and of
/// the usual hand-written Jackson serdes).
pub struct JsonSerde<T>(PhantomData<fn() -> T>);

impl<T> JsonSerde<T> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for JsonSerde<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for JsonSerde<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for JsonSerde<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonSerde<{}>", std::any::type_name::<T>())
    }
}

impl<T: Serialize + DeserializeOwned + Data> Serde for JsonSerde<T> {
    type Target = T;

    fn serialize(&self, _topic: &str, value: &T) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(Bytes::from(serde_json::to_vec(value)?)))
    }

    fn deserialize(&self, _topic: &str, data: Option<&[u8]>) -> Result<T, SerdeError> {
        Ok(serde_json::from_slice(required(data, "JSON")?)?)
    }
}

/// Makes any serde nullable: `None` is a Kafka null and a Kafka null is
/// `None`; `Some(v)` goes through the inner serde.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nullable<S>(pub S);

impl<S: Serde> Serde for Nullable<S> {
    type Target = Option<S::Target>;

    fn serialize(
        &self,
        topic: &str,
        value: &Option<S::Target>,
    ) -> Result<Option<Bytes>, SerdeError> {
        match value {
            None => Ok(None),
            Some(v) => self.0.serialize(topic, v),
        }
    }

    fn deserialize(
        &self,
        topic: &str,
        data: Option<&[u8]>,
    ) -> Result<Option<S::Target>, SerdeError> {
        match data {
            None => Ok(None),
            Some(_) => self.0.deserialize(topic, data).map(Some),
        }
    }
}

/// A shared serde is a serde: one instance can serve a sink and a source
/// (a repartition topic's two ends).
impl<S: Serde> Serde for std::sync::Arc<S> {
    type Target = S::Target;

    fn serialize(&self, topic: &str, value: &S::Target) -> Result<Option<Bytes>, SerdeError> {
        S::serialize(self, topic, value)
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<S::Target, SerdeError> {
        S::deserialize(self, topic, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<S: Serde>(serde: &S, value: &S::Target) -> Vec<u8> {
        serde.serialize("t", value).unwrap().unwrap().to_vec()
    }

    #[test]
    fn integers_have_javas_big_endian_layout() {
        // Java's LongSerializer writes 42 as 00 00 00 00 00 00 00 2a.
        assert_eq!(bytes(&I64Serde, &42), [0, 0, 0, 0, 0, 0, 0, 0x2a]);
        assert_eq!(bytes(&I64Serde, &-1), [0xff; 8]);
        assert_eq!(bytes(&I32Serde, &0x0102_0304), [1, 2, 3, 4]);
        assert_eq!(bytes(&I32Serde, &i32::MIN), [0x80, 0, 0, 0]);
        assert_eq!(
            I64Serde
                .deserialize("t", Some(&[0, 0, 0, 0, 0, 0, 1, 0]))
                .unwrap(),
            256
        );
        assert_eq!(
            I32Serde
                .deserialize("t", Some(&[0xff, 0xff, 0xff, 0xfe]))
                .unwrap(),
            -2
        );
    }

    #[test]
    fn floats_have_javas_ieee_big_endian_layout() {
        // Java: Double.doubleToRawLongBits(1.5) = 0x3FF8000000000000.
        assert_eq!(bytes(&F64Serde, &1.5), [0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        // Java: Float.floatToRawIntBits(-2.0f) = 0xC0000000.
        assert_eq!(bytes(&F32Serde, &-2.0), [0xc0, 0, 0, 0]);
        assert_eq!(
            F64Serde
                .deserialize("t", Some(&[0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18]))
                .unwrap(),
            std::f64::consts::PI
        );
    }

    #[test]
    fn wrong_sizes_and_nulls_are_errors_not_panics() {
        assert!(matches!(
            I64Serde.deserialize("t", Some(&[1, 2, 3])),
            Err(SerdeError::Length {
                type_name: "Long",
                expected: 8,
                actual: 3
            })
        ));
        assert!(matches!(
            I32Serde.deserialize("t", Some(&[])),
            Err(SerdeError::Length { .. })
        ));
        assert!(matches!(
            F32Serde.deserialize("t", None),
            Err(SerdeError::Null { .. })
        ));
        assert!(matches!(
            StringSerde.deserialize("t", Some(&[0xff, 0xfe])),
            Err(SerdeError::Utf8(_))
        ));
        assert!(matches!(
            JsonSerde::<Vec<u32>>::new().deserialize("t", Some(b"{")),
            Err(SerdeError::Json(_))
        ));
        assert!(matches!(
            VoidSerde.deserialize("t", Some(b"x")),
            Err(SerdeError::NotNull { actual: 1 })
        ));
    }

    #[test]
    fn strings_are_utf8() {
        assert_eq!(bytes(&StringSerde, &"héllo".to_owned()), "héllo".as_bytes());
        assert_eq!(
            StringSerde
                .deserialize("t", Some("grüß".as_bytes()))
                .unwrap(),
            "grüß"
        );
        assert_eq!(bytes(&StringSerde, &String::new()), b"");
    }

    #[test]
    fn json_round_trips_any_serde_type() {
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Order {
            id: u32,
            item: String,
        }
        let order = Order {
            id: 7,
            item: "tea".into(),
        };
        let serde = JsonSerde::<Order>::new();
        assert_eq!(bytes(&serde, &order), br#"{"id":7,"item":"tea"}"#);
        assert_eq!(
            serde
                .deserialize("t", Some(br#"{"item":"tea","id":7}"#))
                .unwrap(),
            order
        );
    }

    #[test]
    fn nullable_maps_none_to_kafka_null() {
        let serde = Nullable(I64Serde);
        assert_eq!(serde.serialize("t", &None).unwrap(), None);
        assert_eq!(serde.deserialize("t", None).unwrap(), None);
        assert_eq!(bytes(&serde, &Some(1)), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            serde
                .deserialize("t", Some(&[0, 0, 0, 0, 0, 0, 0, 2]))
                .unwrap(),
            Some(2)
        );
        assert!(serde.deserialize("t", Some(&[0])).is_err());
        assert_eq!(VoidSerde.serialize("t", &()).unwrap(), None);
        assert_eq!(bytes(&BytesSerde, &Bytes::from_static(b"\x00\x01")), [0, 1]);
    }

    #[test]
    fn every_double_nan_is_written_as_javas_canonical_nan() {
        let payload = f64::from_bits(0x7ff8_0000_0000_0001);
        assert!(payload.is_nan());
        let written = F64Serde.serialize("t", &payload).unwrap().unwrap();
        assert_eq!(&written[..], &0x7ff8_0000_0000_0000_u64.to_be_bytes());
        // Floats keep their bits, as floatToRawIntBits does.
        let payload = f32::from_bits(0x7fc0_0001);
        let written = F32Serde.serialize("t", &payload).unwrap().unwrap();
        assert_eq!(&written[..], &0x7fc0_0001_u32.to_be_bytes());
    }
}
