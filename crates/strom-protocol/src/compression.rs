//! Compression codecs of Kafka record batches.

/// A batch compression codec, by its id in the batch attributes (bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// All codecs, in id order.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec with attribute id `id`, or `None` for ids Kafka does not define.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Self::None),
            1 => Some(Self::Gzip),
            2 => Some(Self::Snappy),
            3 => Some(Self::Lz4),
            4 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The attribute id of this codec.
    pub fn id(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }
}

/// gzip level when none is given: `Deflater.DEFAULT_COMPRESSION`, as Kafka.
pub const DEFAULT_GZIP_LEVEL: i32 = 6;
/// zstd level when none is given: Kafka's default (KIP-390).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Input per xerial snappy chunk: snappy-java's default block size.
const SNAPPY_XERIAL_BLOCK: usize = 32 * 1024;
/// The xerial snappy stream header: magic, then version 1 and compatible
/// version 1 (big-endian i32 each), as Java clients write it.
const SNAPPY_XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];
const SNAPPY_XERIAL_MAGIC_LEN: usize = 8;
/// Largest zstd window a frame may ask us to allocate (2^25 = 32 MiB): above
/// what producers use at their levels, far below what a hostile frame could
/// ask for (zstd's default limit is 2^27).
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// Why (de)compression failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompressionError {
    /// The decompressed data would exceed the caller's bound.
    #[error("decompressed data exceeds {max} bytes")]
    TooLarge { max: usize },
    /// The compressed data is not valid for its codec.
    #[error("corrupt {codec:?} data: {reason}")]
    Corrupt { codec: Compression, reason: String },
}

fn corrupt(codec: Compression, reason: impl ToString) -> CompressionError {
    CompressionError::Corrupt {
        codec,
        reason: reason.to_string(),
    }
}

/// Compresses `input` with `codec` at `level` (the codec's default when
/// `None`; lz4 has a single level here), appending to `out`. `None` copies.
pub fn compress(
    codec: Compression,
    level: Option<i32>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    use std::io::Write;
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let level = u32::try_from(level.unwrap_or(DEFAULT_GZIP_LEVEL).clamp(1, 9)).unwrap_or(6);
            let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
            encoder.write_all(input).map_err(|e| corrupt(codec, e))?;
            encoder.finish().map_err(|e| corrupt(codec, e))?;
        }
        Compression::Snappy => {
            out.extend_from_slice(&SNAPPY_XERIAL_HEADER);
            let mut encoder = snap::raw::Encoder::new();
            for chunk in input.chunks(SNAPPY_XERIAL_BLOCK) {
                let start = out.len();
                out.extend_from_slice(&[0; 4]);
                out.resize(start + 4 + snap::raw::max_compress_len(chunk.len()), 0);
                let n = encoder
                    .compress(chunk, &mut out[start + 4..])
                    .map_err(|e| corrupt(codec, e))?;
                out.truncate(start + 4 + n);
                let n = u32::try_from(n).map_err(|e| corrupt(codec, e))?;
                out[start..start + 4].copy_from_slice(&n.to_be_bytes());
            }
        }
        Compression::Lz4 => {
            // Kafka's framing: 64 KiB independent blocks, no checksums, no
            // content size (FLG 0x60, BD 0x40).
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
            encoder.write_all(input).map_err(|e| corrupt(codec, e))?;
            encoder.finish().map_err(|e| corrupt(codec, e))?;
        }
        Compression::Zstd => {
            let mut encoder =
                zstd::stream::write::Encoder::new(out, level.unwrap_or(DEFAULT_ZSTD_LEVEL))
                    .map_err(|e| corrupt(codec, e))?;
            encoder.write_all(input).map_err(|e| corrupt(codec, e))?;
            encoder.finish().map_err(|e| corrupt(codec, e))?;
        }
    }
    Ok(())
}

/// Decompresses `input`, appending at most `max_output` bytes to `out`;
/// beyond that it stops with [`CompressionError::TooLarge`] without having
/// allocated much more. Snappy accepts both the xerial framing (Java clients)
/// and a raw block (librdkafka's default).
pub fn decompress(
    codec: Compression,
    input: &[u8],
    max_output: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    match codec {
        Compression::None => {
            if input.len() > max_output {
                return Err(CompressionError::TooLarge { max: max_output });
            }
            out.extend_from_slice(input);
            Ok(())
        }
        Compression::Gzip => read_bounded(
            codec,
            flate2::read::MultiGzDecoder::new(input),
            max_output,
            out,
        ),
        Compression::Snappy => decompress_snappy(input, max_output, out),
        Compression::Lz4 => read_bounded(
            codec,
            lz4_flex::frame::FrameDecoder::new(input),
            max_output,
            out,
        ),
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::new(input).map_err(|e| corrupt(codec, e))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt(codec, e))?;
            read_bounded(codec, decoder, max_output, out)
        }
    }
}

fn read_bounded(
    codec: Compression,
    reader: impl std::io::Read,
    max_output: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    use std::io::Read;
    let start = out.len();
    let limit = u64::try_from(max_output)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    reader
        .take(limit)
        .read_to_end(out)
        .map_err(|e| corrupt(codec, e))?;
    if out.len() - start > max_output {
        out.truncate(start);
        return Err(CompressionError::TooLarge { max: max_output });
    }
    Ok(())
}

fn decompress_snappy(
    input: &[u8],
    max_output: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    let codec = Compression::Snappy;
    let start = out.len();
    let mut decoder = snap::raw::Decoder::new();
    let mut block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), CompressionError> {
        let len = snap::raw::decompress_len(block).map_err(|e| corrupt(codec, e))?;
        if out.len() - start + len > max_output {
            return Err(CompressionError::TooLarge { max: max_output });
        }
        let at = out.len();
        out.resize(at + len, 0);
        let n = decoder
            .decompress(block, &mut out[at..])
            .map_err(|e| corrupt(codec, e))?;
        out.truncate(at + n);
        Ok(())
    };
    let result = if input.len() >= SNAPPY_XERIAL_MAGIC_LEN
        && input[..SNAPPY_XERIAL_MAGIC_LEN] == SNAPPY_XERIAL_HEADER[..SNAPPY_XERIAL_MAGIC_LEN]
    {
        let Some(mut rest) = input.get(SNAPPY_XERIAL_HEADER.len()..) else {
            return Err(corrupt(codec, "xerial header truncated"));
        };
        let mut result = Ok(());
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                result = Err(corrupt(codec, "xerial chunk length truncated"));
                break;
            };
            let len = u32::from_be_bytes(*len) as usize;
            let Some(chunk) = tail.get(..len) else {
                result = Err(corrupt(codec, "xerial chunk truncated"));
                break;
            };
            if let Err(e) = block(chunk, out) {
                result = Err(e);
                break;
            }
            rest = &tail[len..];
        }
        result
    } else {
        block(input, out)
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        for codec in Compression::ALL {
            for len in [0, 1, 100, 32 * 1024, 32 * 1024 + 1, 300_000] {
                let input = sample(len);
                let mut compressed = Vec::new();
                compress(codec, None, &input, &mut compressed).unwrap();
                let mut output = vec![9u8];
                decompress(codec, &compressed, len, &mut output).unwrap();
                assert_eq!(&output[1..], &input[..], "{codec:?} len {len}");
            }
        }
    }

    #[test]
    fn snappy_writes_xerial_and_reads_raw_blocks_too() {
        let input = sample(100_000);
        let mut framed = Vec::new();
        compress(Compression::Snappy, None, &input, &mut framed).unwrap();
        assert_eq!(framed[..16], SNAPPY_XERIAL_HEADER);
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        let mut out = Vec::new();
        decompress(Compression::Snappy, &raw, input.len(), &mut out).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn lz4_frame_uses_kafkas_flags() {
        let mut out = Vec::new();
        compress(Compression::Lz4, None, b"hello", &mut out).unwrap();
        assert_eq!(out[..4], [0x04, 0x22, 0x4d, 0x18], "LZ4 frame magic");
        assert_eq!(
            out[4], 0x60,
            "FLG: version 1, independent blocks, no checksums"
        );
        assert_eq!(out[5], 0x40, "BD: 64 KiB blocks");
    }

    #[test]
    fn decompression_bombs_stop_at_the_bound() {
        let zeros = vec![0u8; 64 << 20];
        for codec in Compression::ALL {
            let mut compressed = Vec::new();
            compress(codec, None, &zeros, &mut compressed).unwrap();
            let mut out = Vec::new();
            let result = decompress(codec, &compressed, 1 << 20, &mut out);
            assert!(
                matches!(result, Err(CompressionError::TooLarge { .. })),
                "{codec:?}"
            );
            assert!(
                out.capacity() < 8 << 20,
                "{codec:?} allocated {}",
                out.capacity()
            );
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..2000), codec in 0u8..5) {
            let codec = Compression::from_id(codec).unwrap();
            let mut out = Vec::new();
            let _ = decompress(codec, &data, 1 << 20, &mut out);
            // Mutated valid data too.
            let mut valid = Vec::new();
            compress(codec, None, &data, &mut valid).unwrap();
            if !valid.is_empty() {
                let i = data.len() % valid.len();
                valid[i] ^= 0x5a;
            }
            let _ = decompress(codec, &valid, 1 << 20, &mut out);
        }
    }
}
