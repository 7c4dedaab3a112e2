//! Compression codecs of Kafka record batches, framed as Kafka's clients
//! write and read them.
//!
//! - gzip: a gzip stream (several members are read, as Java's `GZIPInputStream`).
//! - snappy: Java clients write snappy-java's "xerial" framing: a 16-byte header
//!   (`\x82SNAPPY\0`, version 1, compatible version 1, big-endian i32s), then
//!   chunks of `[u32 BE compressed length][raw snappy block]`, one per 32 KiB
//!   of input. librdkafka writes one raw snappy block. We write xerial and read
//!   both. (Neither is the snappy "framing format" of the `snap` crate.)
//! - lz4: the LZ4 frame format. Kafka's Java client writes 64 KiB independent
//!   blocks without checksums or content size (FLG 0x60, BD 0x40); we write the
//!   same and read any valid frame.
//! - zstd: a zstd frame.
//!
//! Decompression is bounded: it fails with [`CompressionError::TooLarge`] as
//! soon as the output would pass the caller's limit, and never allocates from a
//! size the input declares beyond that limit. [`decompress_budgeted`] also
//! asks the caller before the output takes more memory, a chunk at a time, so
//! that a broker can bound what all decompressions together take.

use std::borrow::Cow;
use std::io::{self, Read, Write};

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

    /// Kafka's name of the codec, as `compression.type` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }

    /// The codec Kafka calls `name` (`compression.type` values other than
    /// the broker's `producer`), or `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
/// What tells a xerial stream from a raw block: a raw block starts with the
/// varint of its uncompressed length, and 0x82 'S' 'N' ... would declare a
/// length no batch has.
const SNAPPY_XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
/// Largest zstd window (2^27 = 128 MiB) a frame may ask for: zstd's own
/// default limit, which Kafka's Java decoder keeps. Java producers at levels
/// 21 and 22 stream with unknown size and so use windows of 2^26 and 2^27;
/// a lower limit would refuse their batches. The window buffer is allocated
/// but only touched as far as output is produced, and output is bounded.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Output is produced (and memory asked for) this much at a time: small
/// next to any budget, large enough that asking costs nothing measurable.
const OUTPUT_CHUNK: usize = 256 * 1024;
/// Output past this size is large: its buffer is taken at
/// [`LARGE_OUTPUT_CAPACITY`] at once. Batches of well-behaved producers
/// stay below it and keep the allocator's usual growth.
const LARGE_OUTPUT_THRESHOLD: usize = 1 << 20;
/// The capacity a large output buffer starts with: above glibc's largest
/// mmap threshold (32 MiB), so the buffer is mapped on its own and unmapped
/// when freed. Otherwise, after a burst of large batches decompressed on
/// many threads, each thread's malloc arena keeps what its last batch took.
/// Capacity never written costs address space, not memory.
const LARGE_OUTPUT_CAPACITY: usize = 33 << 20;

/// Why (de)compression failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompressionError {
    /// The output would exceed a bound: the caller's `max_output` when
    /// decompressing, or the 2 GiB a batch length can express when building.
    #[error("output exceeds {max} bytes")]
    TooLarge { max: usize },
    /// The caller's memory budget refused more output
    /// ([`decompress_budgeted`]); the data may be fine.
    #[error("decompression memory budget exhausted")]
    OverBudget,
    /// The compressed data is not valid for its codec.
    #[error("corrupt {codec} data: {reason}")]
    Corrupt {
        codec: Compression,
        reason: Cow<'static, str>,
    },
    /// A compressor failed (it writes to memory, so this means a codec
    /// refused its parameters or memory ran out).
    #[error("{codec} compression failed: {source}")]
    Io {
        codec: Compression,
        #[source]
        source: io::Error,
    },
}

fn corrupt(codec: Compression, reason: impl Into<Cow<'static, str>>) -> CompressionError {
    CompressionError::Corrupt {
        codec,
        reason: reason.into(),
    }
}

fn corrupt_io(codec: Compression, e: &io::Error) -> CompressionError {
    corrupt(codec, e.to_string())
}

fn compress_io(codec: Compression) -> impl Fn(io::Error) -> CompressionError {
    move |source| CompressionError::Io { codec, source }
}

/// Compresses `input` with `codec` at `level`, appending to `out`. `None`
/// copies.
///
/// Levels: gzip 0..=9 (default 6; negative means the default, above 9 is 9),
/// zstd as zstd takes them (default 3; zstd clamps), snappy has none and lz4
/// has a single one here (Kafka's `compression.lz4.level` picks LZ4-HC levels,
/// which `lz4_flex` does not have; any level reads the same).
pub fn compress(
    codec: Compression,
    level: Option<i32>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    let err = compress_io(codec);
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let level = match level {
                Some(level) if level >= 0 => level.min(9),
                _ => DEFAULT_GZIP_LEVEL,
            };
            let level = u32::try_from(level).unwrap_or(6);
            let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
            encoder.write_all(input).map_err(&err)?;
            encoder.finish().map_err(&err)?;
        }
        Compression::Snappy => compress_snappy_xerial(input, out)?,
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent)
                .block_checksums(false)
                .content_checksum(false);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
            encoder.write_all(input).map_err(&err)?;
            encoder.finish().map_err(|e| err(e.into()))?;
        }
        Compression::Zstd => {
            let mut encoder =
                zstd::stream::write::Encoder::new(out, level.unwrap_or(DEFAULT_ZSTD_LEVEL))
                    .map_err(&err)?;
            encoder.write_all(input).map_err(&err)?;
            encoder.finish().map_err(&err)?;
        }
    }
    Ok(())
}

fn compress_snappy_xerial(input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
    let codec = Compression::Snappy;
    out.extend_from_slice(&SNAPPY_XERIAL_HEADER);
    let mut encoder = snap::raw::Encoder::new();
    for chunk in input.chunks(SNAPPY_XERIAL_BLOCK) {
        let length_at = out.len();
        let block_at = length_at + 4;
        out.resize(block_at + snap::raw::max_compress_len(chunk.len()), 0);
        let n = encoder
            .compress(chunk, &mut out[block_at..])
            .map_err(|e| compress_io(codec)(io::Error::other(e)))?;
        out.truncate(block_at + n);
        // A 32 KiB chunk compresses to well under 4 GiB.
        let n = u32::try_from(n).map_err(|e| compress_io(codec)(io::Error::other(e)))?;
        out[length_at..block_at].copy_from_slice(&n.to_be_bytes());
    }
    Ok(())
}

/// Decompresses `input`, appending at most `max_output` bytes to `out`.
///
/// Beyond `max_output` it stops with [`CompressionError::TooLarge`] having
/// produced little more than the bound. On any error `out` is left as it was.
/// Snappy accepts both the xerial framing (Java clients) and a raw block
/// (librdkafka's default); lz4 any valid frame.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    max_output: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    decompress_budgeted(codec, input, max_output, out, &mut |_| true)
}

/// [`decompress`], asking `grow(n)` before the output takes `n` more bytes
/// (in chunks of [`OUTPUT_CHUNK`], or a snappy block's declared length);
/// when `grow` answers `false` it stops with
/// [`CompressionError::OverBudget`]. The bytes asked for add up to at most
/// `max_output` plus one chunk. `None` copies nothing new and asks nothing.
pub fn decompress_budgeted(
    codec: Compression,
    input: &[u8],
    max_output: usize,
    out: &mut Vec<u8>,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<(), CompressionError> {
    let start = out.len();
    if input.is_empty() && codec != Compression::None {
        // Every codec's framing has at least a header; Java's decoders fail too.
        return Err(corrupt(codec, "empty input"));
    }
    let result = match codec {
        Compression::None => {
            if input.len() > max_output {
                Err(CompressionError::TooLarge { max: max_output })
            } else {
                out.extend_from_slice(input);
                Ok(())
            }
        }
        Compression::Gzip => read_bounded(
            codec,
            flate2::read::MultiGzDecoder::new(input),
            max_output,
            out,
            grow,
        ),
        Compression::Snappy => decompress_snappy(input, max_output, out, grow),
        Compression::Lz4 => check_lz4_frames(input)
            .map_err(|reason| corrupt(codec, reason))
            .and_then(|()| {
                read_bounded(
                    codec,
                    lz4_flex::frame::FrameDecoder::new(input),
                    max_output,
                    out,
                    grow,
                )
            }),
        Compression::Zstd => zstd::stream::read::Decoder::new(input)
            .and_then(|mut decoder| {
                decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Ok(decoder)
            })
            .map_err(|e| corrupt_io(codec, &e))
            .and_then(|decoder| read_bounded(codec, decoder, max_output, out, grow)),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Reads all of `reader` into `out`, failing once more than `max_output`
/// bytes come out. Reads at most one byte past the bound, a chunk at a time,
/// each asked of `grow` first.
fn read_bounded(
    codec: Compression,
    mut reader: impl Read,
    max_output: usize,
    out: &mut Vec<u8>,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<(), CompressionError> {
    let start = out.len();
    loop {
        let produced = out.len() - start;
        if produced > max_output {
            return Err(CompressionError::TooLarge { max: max_output });
        }
        let want = OUTPUT_CHUNK.min(max_output - produced + 1);
        if !grow(want) {
            return Err(CompressionError::OverBudget);
        }
        reserve_output(out, want);
        // Into the reserved capacity, without zero-filling it first.
        let filled = (&mut reader)
            .take(u64::try_from(want).unwrap_or(u64::MAX))
            .read_to_end(out)
            .map_err(|e| corrupt_io(codec, &e))?;
        if filled < want {
            break;
        }
    }
    if out.len() - start > max_output {
        return Err(CompressionError::TooLarge { max: max_output });
    }
    Ok(())
}

/// Makes room for `additional` more bytes of output; see
/// [`LARGE_OUTPUT_CAPACITY`] for why a large output jumps to it.
fn reserve_output(out: &mut Vec<u8>, additional: usize) {
    let needed = out.len().saturating_add(additional);
    if needed > LARGE_OUTPUT_THRESHOLD && out.capacity() < LARGE_OUTPUT_CAPACITY {
        out.reserve_exact(needed.max(LARGE_OUTPUT_CAPACITY) - out.len());
    } else {
        out.reserve(additional);
    }
}

/// Walks the LZ4 frames in `input` from block header to block header and
/// checks that each ends with its end mark (and content checksum, if flagged)
/// and that nothing else follows. `lz4_flex` takes the input ending inside or
/// right before a block header for the end of the frame, which would pass a
/// truncated payload off as a short one. Block contents and checksums are the
/// decoder's to check.
fn check_lz4_frames(input: &[u8]) -> Result<(), &'static str> {
    const MAGIC: u32 = 0x184d_2204;
    const LEGACY_MAGIC: u32 = 0x184c_2102;
    const SKIPPABLE_MAGIC_MASK: u32 = 0xffff_fff0;
    const SKIPPABLE_MAGIC: u32 = 0x184d_2a50;
    const FLG_BLOCK_CHECKSUM: u8 = 0x10;
    const FLG_CONTENT_SIZE: u8 = 0x08;
    const FLG_CONTENT_CHECKSUM: u8 = 0x04;
    const FLG_DICT_ID: u8 = 0x01;

    fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
        let bytes = buf.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    let mut at = 0;
    while at < input.len() {
        let magic = u32_at(input, at).ok_or("lz4 frame magic truncated")?;
        at += 4;
        if magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC {
            let len = u32_at(input, at).ok_or("lz4 skippable frame truncated")?;
            at = at
                .checked_add(4 + usize::try_from(len).map_err(|_| "lz4 frame too long")?)
                .filter(|end| *end <= input.len())
                .ok_or("lz4 skippable frame truncated")?;
            continue;
        }
        if magic == LEGACY_MAGIC {
            // Legacy frames have no end mark: they end where the input does.
            return Ok(());
        }
        if magic != MAGIC {
            return Err("not an lz4 frame");
        }
        let flg = *input.get(at).ok_or("lz4 frame header truncated")?;
        let mut header = 3; // FLG, BD, header checksum
        if flg & FLG_CONTENT_SIZE != 0 {
            header += 8;
        }
        if flg & FLG_DICT_ID != 0 {
            header += 4;
        }
        at += header;
        let block_checksum = if flg & FLG_BLOCK_CHECKSUM != 0 { 4 } else { 0 };
        loop {
            let block = u32_at(input, at).ok_or("lz4 frame truncated before its end mark")?;
            at += 4;
            if block == 0 {
                break;
            }
            let len = usize::try_from(block & 0x7fff_ffff).map_err(|_| "lz4 block too long")?;
            at = at
                .checked_add(len + block_checksum)
                .filter(|end| *end <= input.len())
                .ok_or("lz4 block truncated")?;
        }
        if flg & FLG_CONTENT_CHECKSUM != 0 {
            at += 4;
            if at > input.len() {
                return Err("lz4 content checksum truncated");
            }
        }
    }
    Ok(())
}

fn decompress_snappy(
    input: &[u8],
    max_output: usize,
    out: &mut Vec<u8>,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<(), CompressionError> {
    let codec = Compression::Snappy;
    let start = out.len();
    let mut decoder = snap::raw::Decoder::new();
    let mut block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), CompressionError> {
        // The block declares its length up front: check it against what is
        // left of the budget before allocating for it.
        let len = snap::raw::decompress_len(block).map_err(|e| corrupt(codec, e.to_string()))?;
        if len > max_output - (out.len() - start) {
            return Err(CompressionError::TooLarge { max: max_output });
        }
        if !grow(len) {
            return Err(CompressionError::OverBudget);
        }
        reserve_output(out, len);
        let at = out.len();
        out.resize(at + len, 0);
        let n = decoder
            .decompress(block, &mut out[at..])
            .map_err(|e| corrupt(codec, e.to_string()))?;
        out.truncate(at + n);
        Ok(())
    };
    if !input.starts_with(SNAPPY_XERIAL_MAGIC) {
        return block(input, out);
    }
    let mut rest = input;
    while !rest.is_empty() {
        // snappy-java reads concatenated streams: a header may come again.
        if rest.starts_with(SNAPPY_XERIAL_MAGIC) {
            rest = rest
                .get(SNAPPY_XERIAL_HEADER.len()..)
                .ok_or_else(|| corrupt(codec, "xerial header truncated"))?;
            continue;
        }
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt(codec, "xerial chunk length truncated"))?;
        let len = usize::try_from(u32::from_be_bytes(*len))
            .map_err(|_| corrupt(codec, "xerial chunk length out of range"))?;
        let chunk = tail
            .get(..len)
            .ok_or_else(|| corrupt(codec, "xerial chunk truncated"))?;
        block(chunk, out)?;
        rest = &tail[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    fn compressed(codec: Compression, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        compress(codec, None, input, &mut out).unwrap();
        out
    }

    #[test]
    fn every_codec_round_trips() {
        for codec in Compression::ALL {
            for len in [0, 1, 100, 32 * 1024, 32 * 1024 + 1, 64 * 1024 + 7, 300_000] {
                let input = sample(len);
                let compressed = compressed(codec, &input);
                let mut output = vec![9u8];
                decompress(codec, &compressed, len, &mut output).unwrap();
                assert_eq!(output[0], 9, "{codec} appends");
                assert_eq!(&output[1..], &input[..], "{codec} len {len}");
            }
        }
    }

    #[test]
    fn the_bound_is_exact() {
        let input = sample(10_000);
        for codec in Compression::ALL {
            let compressed = compressed(codec, &input);
            let mut out = Vec::new();
            decompress(codec, &compressed, input.len(), &mut out).unwrap();
            let mut out = vec![1, 2, 3];
            let result = decompress(codec, &compressed, input.len() - 1, &mut out);
            assert!(
                matches!(result, Err(CompressionError::TooLarge { max: 9_999 })),
                "{codec}: {result:?}"
            );
            assert_eq!(out, [1, 2, 3], "{codec}: a failure leaves `out` alone");
        }
    }

    #[test]
    fn names_and_ids_agree_with_kafka() {
        let names: Vec<_> = Compression::ALL.iter().map(|c| c.to_string()).collect();
        assert_eq!(names, ["none", "gzip", "snappy", "lz4", "zstd"]);
        for (id, codec) in Compression::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(codec.id()), id);
            assert_eq!(Compression::from_id(codec.id()), Some(codec));
            assert_eq!(Compression::from_name(codec.name()), Some(codec));
        }
        assert_eq!(Compression::from_id(5), None);
        assert_eq!(Compression::from_name("producer"), None);
    }

    #[test]
    fn snappy_writes_xerial_chunks_of_32_kib() {
        let input = sample(100_000);
        let framed = compressed(Compression::Snappy, &input);
        assert_eq!(framed[..16], SNAPPY_XERIAL_HEADER);
        // Walk the chunks: four of them (3 x 32 KiB + the rest), each a raw block.
        let mut rest = &framed[16..];
        let mut sizes = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            sizes.push(snap::raw::decompress_len(&rest[4..4 + len]).unwrap());
            rest = &rest[4 + len..];
        }
        assert_eq!(sizes, [32_768, 32_768, 32_768, 100_000 - 3 * 32_768]);
    }

    #[test]
    fn snappy_reads_raw_blocks() {
        let input = sample(100_000);
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        let mut out = Vec::new();
        decompress(Compression::Snappy, &raw, input.len(), &mut out).unwrap();
        assert_eq!(out, input);
    }

    /// kafka-python's codec test vector (test/test_codec.py): `SNAPPY` * 50
    /// then `XERIAL` * 50, in xerial framing with 300-byte blocks.
    #[test]
    fn snappy_reads_kafka_pythons_xerial_vector() {
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        for word in [b"SNAPPY", b"XERIAL"] {
            framed.extend_from_slice(&[0, 0, 0, 0x18, 0xac, 0x02, 0x14]);
            framed.extend_from_slice(word);
            framed.extend_from_slice(&[0xfe, 6, 0, 0xfe, 6, 0, 0xfe, 6, 0, 0xfe, 6, 0, 0x96, 6, 0]);
        }
        let mut out = Vec::new();
        decompress(Compression::Snappy, &framed, 600, &mut out).unwrap();
        assert_eq!(out, [b"SNAPPY".repeat(50), b"XERIAL".repeat(50)].concat());
    }

    #[test]
    fn snappy_reads_concatenated_xerial_streams() {
        let mut framed = compressed(Compression::Snappy, b"first ");
        framed.extend(compressed(Compression::Snappy, b"second"));
        let mut out = Vec::new();
        decompress(Compression::Snappy, &framed, 100, &mut out).unwrap();
        assert_eq!(out, b"first second");
    }

    #[test]
    fn lz4_frame_uses_kafkas_flags() {
        let out = compressed(Compression::Lz4, b"hello");
        assert_eq!(out[..4], [0x04, 0x22, 0x4d, 0x18], "LZ4 frame magic");
        assert_eq!(
            out[4], 0x60,
            "FLG: version 1, independent blocks, no checksums, no content size"
        );
        assert_eq!(out[5], 0x40, "BD: 64 KiB blocks");
    }

    #[test]
    fn lz4_reads_frames_with_other_settings() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
        let input = sample(300_000);
        let info = FrameInfo::new()
            .block_size(BlockSize::Max4MB)
            .block_mode(BlockMode::Linked)
            .block_checksums(true)
            .content_checksum(true)
            .content_size(Some(input.len() as u64));
        let mut encoder = FrameEncoder::with_frame_info(info, Vec::new());
        encoder.write_all(&input).unwrap();
        let frame = encoder.finish().unwrap();
        assert_ne!(frame[4], 0x60);
        let mut out = Vec::new();
        decompress(Compression::Lz4, &frame, input.len(), &mut out).unwrap();
        assert_eq!(out, input);
    }

    /// A zstd frame built by hand (RFC 8878) whose header asks for a
    /// 2^`window_log` window and holds one raw block.
    fn zstd_frame_with_window(window_log: u8, content: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd];
        frame.push(0x00); // descriptor: no content size, not single-segment, no checksum
        frame.push((window_log - 10) << 3); // window descriptor: exponent, no mantissa
        let header = (content.len() as u32) << 3 | 1; // raw block, last
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.extend_from_slice(content);
        frame
    }

    #[test]
    fn zstd_accepts_the_windows_kafka_accepts() {
        // Java producers at level 22 declare a 2^27 window.
        let frame = zstd_frame_with_window(27, b"hello");
        let mut out = Vec::new();
        decompress(Compression::Zstd, &frame, 100, &mut out).unwrap();
        assert_eq!(out, b"hello");
        let frame = zstd_frame_with_window(28, b"hello");
        assert!(matches!(
            decompress(Compression::Zstd, &frame, 100, &mut out),
            Err(CompressionError::Corrupt { .. })
        ));
    }

    #[test]
    fn levels_are_honoured() {
        let input = sample(200_000);
        for codec in [Compression::Gzip, Compression::Zstd] {
            let mut fast = Vec::new();
            compress(codec, Some(1), &input, &mut fast).unwrap();
            let mut best = Vec::new();
            compress(codec, Some(9), &input, &mut best).unwrap();
            assert!(
                best.len() < fast.len(),
                "{codec}: {} vs {}",
                best.len(),
                fast.len()
            );
            let mut default = Vec::new();
            compress(codec, None, &input, &mut default).unwrap();
            let mut explicit = Vec::new();
            let level = if codec == Compression::Gzip { 6 } else { 3 };
            compress(codec, Some(level), &input, &mut explicit).unwrap();
            assert_eq!(default, explicit, "{codec} default level");
        }
        // Kafka's -1 means the default for gzip.
        let mut a = Vec::new();
        compress(Compression::Gzip, Some(-1), &input, &mut a).unwrap();
        assert_eq!(a, compressed(Compression::Gzip, &input));
    }

    #[test]
    fn decompression_bombs_stop_at_the_bound() {
        let zeros = vec![0u8; 64 << 20];
        let mut bombs: Vec<(String, Compression, Vec<u8>)> = Compression::ALL
            .into_iter()
            .map(|codec| (codec.to_string(), codec, compressed(codec, &zeros)))
            .collect();
        // One raw snappy block declaring 64 MiB.
        bombs.push((
            "raw snappy".into(),
            Compression::Snappy,
            snap::raw::Encoder::new().compress_vec(&zeros).unwrap(),
        ));
        // A raw snappy header declaring 4 GiB - 1 with nothing behind it.
        bombs.push((
            "snappy header".into(),
            Compression::Snappy,
            vec![0xff, 0xff, 0xff, 0xff, 0x0f],
        ));
        drop(zeros);
        for (name, codec, bomb) in bombs {
            let started = Instant::now();
            let mut out = Vec::new();
            let result = decompress(codec, &bomb, 1 << 20, &mut out);
            assert!(
                matches!(result, Err(CompressionError::TooLarge { max: 1_048_576 })),
                "{name}: {result:?}"
            );
            // Never a size the input declares: at most the fixed
            // reservation of a large output (address space; only what is
            // written takes memory).
            assert!(
                out.capacity() <= LARGE_OUTPUT_CAPACITY,
                "{name} allocated {}",
                out.capacity()
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name} took {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn the_budget_is_asked_before_output_grows() {
        let input = sample(3 * OUTPUT_CHUNK + 10);
        for codec in Compression::ALL.into_iter().skip(1) {
            let compressed = compressed(codec, &input);
            // Enough budget: everything asked for adds up to the output and
            // at most one chunk more.
            let mut asked = 0;
            let mut out = Vec::new();
            decompress_budgeted(codec, &compressed, 1 << 30, &mut out, &mut |n| {
                asked += n;
                true
            })
            .unwrap();
            assert_eq!(out, input, "{codec}");
            assert!(
                asked >= input.len() && asked <= input.len() + OUTPUT_CHUNK + 1,
                "{codec} asked {asked}"
            );
            // A budget of one chunk: refused part-way, `out` left alone.
            let mut left = OUTPUT_CHUNK;
            let mut out = vec![7];
            let result = decompress_budgeted(codec, &compressed, 1 << 30, &mut out, &mut |n| {
                left.checked_sub(n).map(|l| left = l).is_some()
            });
            assert!(
                matches!(result, Err(CompressionError::OverBudget)),
                "{codec}: {result:?}"
            );
            assert_eq!(out, [7], "{codec}");
        }
    }

    #[test]
    fn truncated_payloads_are_errors() {
        let input = sample(70_000);
        for codec in Compression::ALL.into_iter().skip(1) {
            let good = compressed(codec, &input);
            for cut in 0..good.len() {
                let mut out = Vec::new();
                let result = decompress(codec, &good[..cut], 1 << 20, &mut out);
                if codec == Compression::Snappy && result.is_ok() {
                    // Xerial framing has no end mark: a stream cut between
                    // chunks is a valid, shorter stream. The record layer
                    // notices the missing records.
                    assert!(out.len() % SNAPPY_XERIAL_BLOCK == 0 && input.starts_with(&out));
                    continue;
                }
                assert!(result.is_err(), "{codec} cut at {cut} of {}", good.len());
                assert!(out.is_empty());
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..2000), codec in 0u8..5, flip in any::<usize>()) {
            let codec = Compression::from_id(codec).unwrap();
            let mut out = Vec::new();
            let _ = decompress(codec, &data, 1 << 20, &mut out);
            // Valid data with one byte changed.
            let mut valid = compressed(codec, &data);
            if !valid.is_empty() {
                let i = flip % valid.len();
                valid[i] ^= 0x5a;
            }
            let mut out = Vec::new();
            if decompress(codec, &valid, 1 << 20, &mut out).is_ok() {
                prop_assert!(out.len() <= 1 << 20);
            }
        }
    }
}
