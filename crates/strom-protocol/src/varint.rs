//! Kafka's variable-length integers: zig-zag varints (i32) and varlongs (i64)
//! in records, unsigned varints in flexible protocol versions.

use bytes::BufMut;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VarintError {
    #[error("varint truncated")]
    Truncated,
    #[error("varint longer than {0} bytes")]
    TooLong(usize),
}

const MAX_VARINT_BYTES: usize = 5;
const MAX_VARLONG_BYTES: usize = 10;

#[allow(
    clippy::cast_possible_truncation,
    reason = "each byte takes the low 7 bits"
)]
pub fn put_unsigned_varint(buf: &mut impl BufMut, mut v: u32) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "each byte takes the low 7 bits"
)]
fn put_unsigned_varlong(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Writes a zig-zag varint.
pub fn put_varint(buf: &mut impl BufMut, v: i32) {
    put_unsigned_varint(buf, ((v << 1) ^ (v >> 31)) as u32);
}

/// Writes a zig-zag varlong.
pub fn put_varlong(buf: &mut impl BufMut, v: i64) {
    put_unsigned_varlong(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn unsigned_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Bytes [`put_varint`] writes for `v`.
pub fn varint_len(v: i32) -> usize {
    unsigned_len(u64::from(((v << 1) ^ (v >> 31)) as u32))
}

/// Bytes [`put_varlong`] writes for `v`.
pub fn varlong_len(v: i64) -> usize {
    unsigned_len(((v << 1) ^ (v >> 63)) as u64)
}

fn read_unsigned(buf: &mut &[u8], max_bytes: usize) -> Result<u64, VarintError> {
    let mut value = 0u64;
    for i in 0..max_bytes {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(VarintError::Truncated);
        };
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(VarintError::TooLong(max_bytes))
}

/// Reads an unsigned varint, advancing `buf`.
pub fn read_unsigned_varint(buf: &mut &[u8]) -> Result<u32, VarintError> {
    let v = read_unsigned(buf, MAX_VARINT_BYTES)?;
    u32::try_from(v).map_err(|_| VarintError::TooLong(MAX_VARINT_BYTES))
}

/// Reads a zig-zag varint, advancing `buf`.
pub fn read_varint(buf: &mut &[u8]) -> Result<i32, VarintError> {
    let raw = read_unsigned_varint(buf)?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads a zig-zag varlong, advancing `buf`.
pub fn read_varlong(buf: &mut &[u8]) -> Result<i64, VarintError> {
    let raw = read_unsigned(buf, MAX_VARLONG_BYTES)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
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

    #[test]
    fn known_encodings() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(-1), [0x01]);
        assert_eq!(enc(1), [0x02]);
        assert_eq!(enc(63), [0x7e]);
        assert_eq!(enc(-64), [0x7f]);
        assert_eq!(enc(64), [0x80, 0x01]);
        assert_eq!(enc(300), [0xd8, 0x04]);
        assert_eq!(enc(i32::MIN), [0xff, 0xff, 0xff, 0xff, 0x0f]);
    }

    #[test]
    fn overlong_and_truncated_are_errors() {
        assert_eq!(
            read_varint(&mut &[0x80u8, 0x80][..]),
            Err(VarintError::Truncated)
        );
        assert_eq!(
            read_varint(&mut &[0xffu8; 6][..]),
            Err(VarintError::TooLong(5))
        );
        assert_eq!(
            read_varint(&mut &[0xffu8, 0xff, 0xff, 0xff, 0x7f][..]),
            Err(VarintError::TooLong(5))
        );
        assert_eq!(
            read_varlong(&mut &[0xffu8; 11][..]),
            Err(VarintError::TooLong(10))
        );
        assert_eq!(read_varlong(&mut &[][..]), Err(VarintError::Truncated));
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<i32>(), l in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            put_varlong(&mut out, l);
            prop_assert_eq!(out.len(), varint_len(v) + varlong_len(l));
            let mut slice = &out[..];
            prop_assert_eq!(read_varint(&mut slice).unwrap(), v);
            prop_assert_eq!(read_varlong(&mut slice).unwrap(), l);
            prop_assert!(slice.is_empty());
        }

        #[test]
        fn extremes_round_trip(v in prop::sample::select(vec![i64::MIN, i64::MAX, 0, -1, 1])) {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            prop_assert_eq!(read_varlong(&mut &out[..]).unwrap(), v);
        }
    }
}
