//! Kafka's variable-length integers: zig-zag varints (i32) and varlongs (i64)
//! in records, unsigned varints in flexible protocol versions.
//!
//! The encoding is protobuf's base-128 varint: seven bits per byte, least
//! significant group first, the top bit set on every byte but the last. Signed
//! values are zig-zag mapped first (`0, -1, 1, -2, ...` to `0, 1, 2, 3, ...`),
//! so small negative numbers stay short.

use bytes::BufMut;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VarintError {
    /// The input ended inside the varint.
    #[error("varint truncated")]
    Truncated,
    /// The continuation bit is still set on the last byte (the `0`th) a value
    /// of its type may take.
    #[error("varint longer than {0} bytes")]
    TooLong(usize),
    /// The last byte carries bits the type has no room for.
    #[error("varint overflows {0} bits")]
    Overflow(u32),
}

/// Most bytes a 32-bit varint takes: ceil(32 / 7).
pub const MAX_VARINT_BYTES: usize = 5;
/// Most bytes a 64-bit varlong takes: ceil(64 / 7).
pub const MAX_VARLONG_BYTES: usize = 10;

fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)).cast_unsigned()
}

fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)).cast_unsigned()
}

fn unzigzag32(raw: u32) -> i32 {
    (raw >> 1).cast_signed() ^ -((raw & 1).cast_signed())
}

fn unzigzag64(raw: u64) -> i64 {
    (raw >> 1).cast_signed() ^ -((raw & 1).cast_signed())
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "each byte takes the low 7 bits"
)]
fn put_unsigned(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn unsigned_len(v: u64) -> usize {
    // One byte per started group of 7 significant bits; 0 still takes a byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Writes an unsigned varint (flexible versions: compact lengths, tag counts).
pub fn put_unsigned_varint(buf: &mut impl BufMut, v: u32) {
    put_unsigned(buf, u64::from(v));
}

/// Writes a zig-zag varint.
pub fn put_varint(buf: &mut impl BufMut, v: i32) {
    put_unsigned(buf, u64::from(zigzag32(v)));
}

/// Writes a zig-zag varlong.
pub fn put_varlong(buf: &mut impl BufMut, v: i64) {
    put_unsigned(buf, zigzag64(v));
}

/// Bytes [`put_unsigned_varint`] writes for `v`.
pub fn unsigned_varint_len(v: u32) -> usize {
    unsigned_len(u64::from(v))
}

/// Bytes [`put_varint`] writes for `v`.
pub fn varint_len(v: i32) -> usize {
    unsigned_len(u64::from(zigzag32(v)))
}

/// Bytes [`put_varlong`] writes for `v`.
pub fn varlong_len(v: i64) -> usize {
    unsigned_len(zigzag64(v))
}

/// Reads up to `max_bytes` base-128 groups into a value of `bits` bits,
/// advancing `buf` past what it read.
fn read_unsigned(buf: &mut &[u8], max_bytes: usize, bits: u32) -> Result<u64, VarintError> {
    let mut value = 0u64;
    let mut shift = 0u32;
    for (i, &byte) in buf.iter().take(max_bytes).enumerate() {
        let group = u64::from(byte & 0x7f);
        if i + 1 == max_bytes {
            if byte & 0x80 != 0 {
                return Err(VarintError::TooLong(max_bytes));
            }
            // The last byte may only fill the bits the type has left: 4 for a
            // varint (5 * 7 = 35 > 32), 1 for a varlong (70 > 64).
            if group >> (bits - shift) != 0 {
                return Err(VarintError::Overflow(bits));
            }
        }
        value |= group << shift;
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
        shift += 7;
    }
    Err(VarintError::Truncated)
}

/// Reads an unsigned varint, advancing `buf`. On error `buf` is unchanged.
pub fn read_unsigned_varint(buf: &mut &[u8]) -> Result<u32, VarintError> {
    let raw = read_unsigned(buf, MAX_VARINT_BYTES, 32)?;
    // read_unsigned left no bit above 32.
    u32::try_from(raw).map_err(|_| VarintError::Overflow(32))
}

/// Reads a zig-zag varint, advancing `buf`. On error `buf` is unchanged.
pub fn read_varint(buf: &mut &[u8]) -> Result<i32, VarintError> {
    read_unsigned_varint(buf).map(unzigzag32)
}

/// Reads a zig-zag varlong, advancing `buf`. On error `buf` is unchanged.
pub fn read_varlong(buf: &mut &[u8]) -> Result<i64, VarintError> {
    read_unsigned(buf, MAX_VARLONG_BYTES, 64).map(unzigzag64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn enc(v: i32) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    fn enc_long(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varlong(&mut out, v);
        out
    }

    #[test]
    fn known_encodings() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(-1), [0x01]);
        assert_eq!(enc(1), [0x02]);
        assert_eq!(enc(63), [0x7e]);
        assert_eq!(enc(-64), [0x7f]);
        assert_eq!(enc(64), [0x80, 0x01]);
        assert_eq!(enc(300), [0xd8, 0x04]);
        assert_eq!(enc(i32::MAX), [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc(i32::MIN), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc_long(300), [0xd8, 0x04]);
        assert_eq!(
            enc_long(i64::MIN),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert_eq!(
            enc_long(i64::MAX),
            [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        let mut out = Vec::new();
        put_unsigned_varint(&mut out, 300);
        put_unsigned_varint(&mut out, u32::MAX);
        assert_eq!(out, [0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    }

    #[test]
    fn extremes_round_trip() {
        for v in [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX] {
            let out = enc(v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut slice = &out[..];
            assert_eq!(read_varint(&mut slice), Ok(v));
            assert!(slice.is_empty());
        }
        for v in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
            let out = enc_long(v);
            assert_eq!(out.len(), varlong_len(v), "{v}");
            let mut slice = &out[..];
            assert_eq!(read_varlong(&mut slice), Ok(v));
            assert!(slice.is_empty());
        }
        for v in [0, 1, 127, 128, u32::MAX] {
            let mut out = Vec::new();
            put_unsigned_varint(&mut out, v);
            assert_eq!(out.len(), unsigned_varint_len(v));
            assert_eq!(read_unsigned_varint(&mut &out[..]), Ok(v));
        }
    }

    #[test]
    fn overlong_overflowing_and_truncated_are_errors() {
        let cases: [(&[u8], VarintError); 6] = [
            (&[], VarintError::Truncated),
            (&[0x80, 0x80], VarintError::Truncated),
            (&[0xff; 5], VarintError::TooLong(5)),
            (&[0xff; 6], VarintError::TooLong(5)),
            // Five bytes, but the fifth carries bits 35..32.
            (&[0xff, 0xff, 0xff, 0xff, 0x1f], VarintError::Overflow(32)),
            (&[0x80, 0x80, 0x80, 0x80, 0x10], VarintError::Overflow(32)),
        ];
        for (input, expected) in cases {
            let mut slice = input;
            assert_eq!(read_varint(&mut slice), Err(expected), "{input:02x?}");
            assert_eq!(slice, input, "a failed read leaves the input alone");
            assert_eq!(read_unsigned_varint(&mut &input[..]), Err(expected));
        }
        assert_eq!(
            read_varlong(&mut &[0xffu8; 10][..]),
            Err(VarintError::TooLong(10))
        );
        assert_eq!(
            read_varlong(&mut &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..]),
            Err(VarintError::Overflow(64))
        );
        assert_eq!(
            read_varlong(&mut &[0x80u8; 9][..]),
            Err(VarintError::Truncated)
        );
        // Non-minimal but in range: Kafka's readers accept these, so do we.
        assert_eq!(read_varint(&mut &[0x80u8, 0x00][..]), Ok(0));
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<i32>(), l in any::<i64>(), u in any::<u32>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            put_varlong(&mut out, l);
            prop_assert_eq!(out.len(), varint_len(v) + varlong_len(l));
            put_unsigned_varint(&mut out, u);
            let mut slice = &out[..];
            prop_assert_eq!(read_varint(&mut slice), Ok(v));
            prop_assert_eq!(read_varlong(&mut slice), Ok(l));
            prop_assert_eq!(slice.len(), unsigned_varint_len(u));
            prop_assert_eq!(read_unsigned_varint(&mut slice), Ok(u));
            prop_assert!(slice.is_empty());
        }

        #[test]
        fn every_prefix_of_an_encoding_is_truncated(l in any::<i64>()) {
            let out = enc_long(l);
            for cut in 0..out.len() {
                prop_assert_eq!(read_varlong(&mut &out[..cut]), Err(VarintError::Truncated));
            }
        }

        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..16)) {
            let mut slice = &data[..];
            if let Ok(v) = read_varlong(&mut slice) {
                // Whatever decodes re-encodes no longer than it read.
                prop_assert!(varlong_len(v) <= data.len() - slice.len());
            }
            let _ = read_varint(&mut &data[..]);
        }
    }
}
